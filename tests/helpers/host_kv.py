"""Accuracy of a host KV format on the default model: perplexity through the host tier (one prefill
chunk over the first tokens, then one decode step per token, so the context is read back in the tier's
format by both the prefill and the decode kernels) and greedy agreement. Shared by
tests/system/test_host_kv.py and benchmarks/host_kv_accuracy.py."""
from __future__ import annotations

import math
from pathlib import Path

import torch

from hybridllm import LLM, SamplingParams
from hybridllm.kv import Tier
from hybridllm.runtime.step_prep import prepare_step
from hybridllm.scheduler import StepInput

TEXT = Path(__file__).parents[2] / "benchmarks" / "data" / "perplexity_text.txt"
AGREE_PROMPTS = 8
AGREE_TOKENS = 16


def engine(kv: str, fused: bool = False, weight_dtype: str = "float32") -> LLM:
    """cpu_only over the host tier in format kv; fused=False runs attention per layer through
    HostAttention (the native kernel's decodes), fused=True is the default engine's one graph."""
    return LLM(model="default", policy="cpu_only", weight_dtype=weight_dtype, kv_cache_dtype=kv, cpu_fused=fused,
               host_kv_bytes=1 << 26)


def text_ids(llm: LLM, n: int) -> list[int]:
    return llm.tokenizer.encode(TEXT.read_text()).ids[:n]


@torch.inference_mode()
def perplexity(llm: LLM, ids: list[int], prefill: int) -> float:
    """exp(mean NLL) of ids[1:]: ids[:prefill] in one prefill step, then a decode step per token."""
    runner, kv = llm.engine.runtime.executors["cpu_only"], llm.engine.kv
    lin, attn, model = runner.linear, runner.attention, runner.model
    kv.allocate_slots("ppl", len(ids), Tier.HOST)
    table = kv.block_table("ppl")
    nll = 0.0
    try:
        pos = 0
        while pos < len(ids) - 1:
            piece = ids[pos:prefill] if pos == 0 else ids[pos:pos + 1]
            st = prepare_step([StepInput("ppl", tuple(piece), pos, table, True)], runner.block_size, model,
                              torch.device("cpu"), with_rope=False)
            cos, sin = lin.rope_tables(st.positions)
            h = model.embed(st.input_ids).float()                                     # [T, hidden]
            rows = torch.arange(len(piece), dtype=torch.int64)
            if lin.fused:
                logits, _ = lin.run_model(h, cos, sin, attn.prepare(st.md), rows)
            else:
                for i in range(model.cfg.num_hidden_layers):
                    q, k, v = lin.attn_inputs(i, h, cos, sin)
                    h = lin.attn_finish(i, h, attn.forward(i, q, k, v, st.md))
                logits = lin.logits(h)                                               # [T, vocab]
            targets = torch.tensor(ids[pos + 1:pos + 1 + len(piece)], dtype=torch.int64)
            logp = torch.log_softmax(logits[:len(targets)].float(), -1)
            nll -= float(logp.gather(1, targets[:, None]).sum())
            pos += len(piece)
    finally:
        kv.free("ppl")
    return math.exp(nll / (len(ids) - 1))


def greedy(llm: LLM, prompts: list[str]) -> list[tuple[int, ...]]:
    params = SamplingParams(max_tokens=AGREE_TOKENS, temperature=0.0, ignore_eos=True)
    return [tuple(o.token_ids) for o in llm.generate(prompts, params, use_tqdm=False)]
