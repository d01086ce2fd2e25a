"""A GGUF with K-quant matrices (Q4_K, Q5_K, Q6_K, the types of published Q4_K_M files) runs on the CPU
data plane from its own codes, and decodes the same greedy tokens as HF transformers in fp32 on the
converter's dequantized weights."""
import json

import numpy as np
import torch
import transformers
from gguf import GGMLQuantizationType as Q

from hybridllm import LLM, SamplingParams
from hybridllm.converters import convert

from ..helpers.tiny_gguf import random_state, tiny_config, train_tokenizer, write_gguf
from ..helpers.tiny_models import hf_greedy

N = 12
# K-quants need rows of 256-column super-blocks, so wider than the other tiny models.
QTYPES = {"self_attn.q_proj": Q.Q4_K, "self_attn.k_proj": Q.Q6_K, "self_attn.v_proj": Q.Q5_K,
          "self_attn.o_proj": Q.Q4_K, "mlp.gate_proj": Q.Q6_K, "mlp.up_proj": Q.Q4_K, "mlp.down_proj": Q.Q5_K}


def test_k_quant_gguf_runs_from_its_codes_and_matches_hf(tmp_path):
    tok = train_tokenizer()
    cfg = tiny_config("llama", tok.get_vocab_size())
    cfg.update(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2, head_dim=64)
    sd = random_state(cfg, seed=3)
    qtypes = {f"model.layers.{i}.{k}.weight": t for i in range(cfg["num_hidden_layers"]) for k, t in QTYPES.items()}
    # As in llama.cpp's Q4_K_M: the output matrix Q6_K, the embedding Q4_K. Every matrix is then kept (a
    # float one would be rounded to int4 by our own RTN, and that alone moves logits by ~0.1 here).
    qtypes.update({"lm_head.weight": Q.Q6_K, "model.embed_tokens.weight": Q.Q4_K})
    out = convert(write_gguf(tmp_path / "k.gguf", cfg, sd, tok, qtypes=qtypes), tmp_path / "hf", progress=False)
    index = json.loads((out / "quantization.json").read_text())["tensors"]
    assert {v["type"] for v in index.values()} == {"Q4_K", "Q5_K", "Q6_K"}
    assert index["model.layers.0.self_attn.k_proj.weight"]["group_size"] == 16

    llm = LLM(str(out), policy="cpu_only", weight_dtype="auto", host_kv_bytes=1 << 24)
    prec = llm.engine.runtime.executors["cpu_only"].linear.options.precision
    assert prec.weights == "int4" and prec.source == "Q4_K+Q5_K+Q6_K" and prec.dynamic_quant == 0, prec
    prompts = ["def f(x):", "the quick brown fox", "hello world", "1 2 3 4"]
    outs = llm.generate(prompts, SamplingParams(max_tokens=N, temperature=0.0, ignore_eos=True), use_tqdm=False)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    want = [hf_greedy(hf, tok.encode(p).ids, N) for p in prompts]
    assert [list(o.token_ids) for o in outs] == want
    w = hf.model.layers[0].self_attn.q_proj.weight.detach().numpy()
    assert np.abs(w).std() > 1e-3                   # the blocks decode to real, non-trivial weights
