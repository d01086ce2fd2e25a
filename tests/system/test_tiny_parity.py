"""Our model and paged attention against HF transformers on tiny random checkpoints.

Tolerance: fp32 logits within 1e-4 absolute of HF's (observed ~2e-7); greedy tokens equal.
"""
import pytest
import torch

from hybridllm import LLM, SamplingParams
from hybridllm.attention import DeviceAttention
from hybridllm.attention.kv_cache import KVCacheTier, KVLayout
from hybridllm.kv import Tier
from hybridllm.models.llama import LlamaModel
from hybridllm.runtime.executors.gpu_only import ModelRunner
from hybridllm.scheduler import StepInput

from ..helpers.scheduling import on_device
from ..helpers.tiny_models import hf_greedy, make_tiny

CASES = {
    "llama": ("llama", {}),
    "llama-tied": ("llama", {"tie_word_embeddings": True}),
    "llama3-rope": ("llama", {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}}),
    "linear-rope": ("llama", {"rope_scaling": {"rope_type": "linear", "factor": 4.0}}),
    "yarn-rope": ("llama", {"rope_scaling": {"rope_type": "yarn", "factor": 4.0,
                                             "original_max_position_embeddings": 128}}),
    "mistral-window": ("mistral", {"sliding_window": 24, "head_dim": 16}),
    "qwen2-bias": ("qwen2", {"tie_word_embeddings": False}),
    "mha-headdim32": ("llama", {"num_attention_heads": 2, "num_key_value_heads": 2}),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def tiny(request, tmp_path_factory):
    import transformers
    arch, overrides = CASES[request.param]
    folder = make_tiny(tmp_path_factory.mktemp(request.param), arch, **overrides)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return folder, hf


def test_prefill_chunks_and_decodes_match_hf_logits(tiny):
    folder, hf = tiny
    model = LlamaModel.load(folder)
    cfg = model.cfg
    tier = KVCacheTier(Tier.DEVICE, KVLayout(cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim,
                                             16, torch.float32), 16, "cpu")
    runner = ModelRunner(model, DeviceAttention(tier.key_cache, tier.value_cache, cfg.num_attention_heads,
                                                cfg.num_key_value_heads, cfg.head_dim, cfg.sliding_window), 16)
    torch.manual_seed(1)
    ids = torch.randint(0, cfg.vocab_size, (70,))
    with torch.no_grad():
        ref = hf(ids[None]).logits[0]                                  # [70, vocab]
    # Shuffle the block table so logical and physical order differ.
    table = tier.new_pool().allocate(5, "a")[::-1]
    # A chunked prefill (33 then 16 tokens: crossing block boundaries), then single-token decodes.
    got = [runner.execute(on_device(StepInput("a", tuple(ids[:33].tolist()), 0, table, True))).logits[0]]
    got.append(runner.execute(on_device(StepInput("a", tuple(ids[33:49].tolist()), 33, table, True))).logits[0])
    for p in range(49, 70):
        got.append(runner.execute(on_device(StepInput("a", (int(ids[p]),), p, table, True))).logits[0])
    expect = torch.stack([ref[32], ref[48]] + [ref[p] for p in range(49, 70)])
    torch.testing.assert_close(torch.stack(got), expect, atol=1e-4, rtol=0)


def test_batched_greedy_matches_hf(tiny):
    folder, hf = tiny
    llm = LLM(str(folder), policy="gpu_only", max_num_batched_tokens=40)
    prompts = ["a", "hello there", "the quick brown fox jumps over the lazy dog" * 2, "xyz" * 9]
    ids = [llm.tokenizer.encode(p).ids for p in prompts]
    outs = llm.generate(prompts, SamplingParams(max_tokens=12, temperature=0, ignore_eos=True), use_tqdm=False)
    for prompt_ids, out in zip(ids, outs):
        assert list(out.token_ids) == hf_greedy(hf, prompt_ids, 12)
    assert llm.engine.kv.num_used() == 0


def test_neo_with_sliding_window_matches_hf(tmp_path):
    # Prompts longer than the window, a device tier of 3 blocks: most requests prefill on the
    # device with their KV written to the host tier (device_to_host), then decode on the host.
    import transformers
    folder = make_tiny(tmp_path / "mistral", "mistral", sliding_window=24, head_dim=16)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    block = 16 * 2 * 2 * 2 * 16 * 4                    # tokens x layers x (K, V) x kv heads x head_dim x fp32
    llm = LLM(str(folder), policy="neo", kv_cache_dtype="f32", device_kv_bytes=3 * block, host_kv_bytes=256 * block)
    prompts = ["the quick brown fox jumps over the lazy dog", "pack my box with five dozen liquor jugs " * 3,
               "sphinx of black quartz, judge my vow! " * 4, "hi", "how vexingly quick daft zebras jump " * 3]
    outs = llm.generate(prompts, SamplingParams(max_tokens=12, temperature=0, ignore_eos=True), use_tqdm=False)
    for p, out in zip(prompts, outs):
        assert list(out.token_ids) == hf_greedy(hf, llm.tokenizer.encode(p).ids, 12), p
    assert llm.engine.stats().steps_by_policy.get("neo", 0) > 0     # host decodes ran
    assert llm.engine.kv.num_used(Tier.DEVICE) == 0 and llm.engine.kv.num_used(Tier.HOST) == 0


@pytest.mark.parametrize("kv, host", [("auto", "f16"), ("u8", "u8")])
def test_neo_compact_host_tier_stays_close_to_hf(tmp_path, kv, host):
    """The host tier in a compact format (auto: f16; u8: device f32 KV quantized on the way down), decoded
    by the native kernel; the device tier stays f32. Random tiny weights make near-ties common, so the
    bar is most greedy tokens, not all."""
    import transformers
    folder = make_tiny(tmp_path / "mistral", "mistral", sliding_window=24, head_dim=16)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    block = 16 * 2 * 2 * 2 * 16 * 4
    llm = LLM(str(folder), policy="neo", kv_cache_dtype=kv, device_kv_bytes=3 * block, host_kv_bytes=256 * block)
    assert llm.engine.runtime.tiers[Tier.HOST].layout.precision == host
    assert llm.engine.runtime.tiers[Tier.DEVICE].layout.precision == "f32"
    assert "host attention native" in llm.engine.runtime.reason
    prompts = ["the quick brown fox jumps over the lazy dog", "pack my box with five dozen liquor jugs " * 3,
               "sphinx of black quartz, judge my vow! " * 4, "how vexingly quick daft zebras jump " * 3]
    outs = llm.generate(prompts, SamplingParams(max_tokens=12, temperature=0, ignore_eos=True), use_tqdm=False)
    same = sum(a == b for p, out in zip(prompts, outs)
               for a, b in zip(out.token_ids, hf_greedy(hf, llm.tokenizer.encode(p).ids, 12)))
    assert same >= 0.75 * 12 * len(prompts), f"{same} of {12 * len(prompts)} greedy tokens equal HF's"
    assert llm.engine.stats().steps_by_policy.get("neo", 0) > 0


def test_padded_bucketed_decodes_match_hf_logits(tiny):
    """The CUDA-graph path's static buffers on the CPU: three sequences (a bucket of 4, one padded row),
    scattered block tables, logits of every decode step against HF's at 1e-4."""
    from hybridllm.runtime.decode_graphs import DecodeGraphs
    folder, hf = tiny
    model = LlamaModel.load(folder)
    cfg = model.cfg
    tier = KVCacheTier(Tier.DEVICE, KVLayout(cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim,
                                             16, torch.float32), 24, "cpu", pad_block=True)
    attn = DeviceAttention(tier.key_cache, tier.value_cache, cfg.num_attention_heads, cfg.num_key_value_heads,
                           cfg.head_dim, cfg.sliding_window)
    runner = ModelRunner(model, attn, 16)
    graphs = DecodeGraphs(model, attn, tier, max_num_seqs=6, max_model_len=128, capture=False)
    assert graphs.buckets == (1, 2, 4, 6)
    torch.manual_seed(2)
    lens = [5, 30, 47]
    seqs = {n: torch.randint(0, cfg.vocab_size, (n + 12,)) for n in lens}
    pool = tier.new_pool()
    tables = {n: pool.allocate(4, n)[::-1] for n in lens}
    with torch.no_grad():
        ref = {n: hf(ids[None]).logits[0] for n, ids in seqs.items()}
    for n in lens:                                          # prefills, eager
        runner.execute(on_device(StepInput(str(n), tuple(seqs[n][:n].tolist()), 0, tables[n], True)))
    for step in range(12):
        batch = [StepInput(str(n), (int(seqs[n][n + step]),), n + step, tables[n], True) for n in lens]
        assert graphs.accepts(batch)
        got = graphs.run(batch)                             # [3, vocab]
        torch.testing.assert_close(got, torch.stack([ref[n][n + step] for n in lens]), atol=1e-4, rtol=0)
    assert graphs.steps == {4: 12}
    assert pool.num_used == 12 and tier.pad_block == 24 and tier.key_cache[0].shape[0] == 25
