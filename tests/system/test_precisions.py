"""Each CPU weight precision against HF transformers in fp32 on the same (dequantized GGUF) weights.

Greedy agreement: the first 16 tokens of 8 prompts. float32 is exact (8 of 8); int4 from the GGUF's
own Q4_1 codes must agree on at least 7 of 8 (issue 13's target); the others are held to what they
measured on the default model (float16 8, bfloat16 6, int8 with int8 activations 3) less a margin;
benchmarks/perplexity.py measures how much each loses in perplexity.
"""
import pytest
import torch

from hybridllm import LLM, SamplingParams

from ..helpers.default_prompts import PROMPTS
from ..helpers.tiny_models import hf_greedy

pytestmark = pytest.mark.slow      # the real default model

N = 16
CASES = PROMPTS[:8]
GREEDY = SamplingParams(max_tokens=N, temperature=0.0, ignore_eos=True)
# weight_dtype -> (resolved weights label prefix, prompts of 8 that must agree in all 16 tokens,
#                  prompts whose first token must agree)
MIN_AGREE = {"float32": ("float32", 8, 8), "int4": ("int4+Q4_1+Q8_0", 7, 8), "auto": ("int4+Q4_1+Q8_0", 7, 8),
             "int8": ("int8+Q8_0", 2, 8), "bfloat16": ("bfloat16", 5, 8), "float16": ("float16", 7, 8)}


@pytest.fixture(scope="module")
def hf_tokens(default_model_path):
    import transformers
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(default_model_path / "tokenizer.json"))
    hf = transformers.AutoModelForCausalLM.from_pretrained(default_model_path, dtype=torch.float32).eval()
    return [hf_greedy(hf, tok.encode(p).ids, N) for p in CASES]


@pytest.mark.parametrize("weight_dtype", list(MIN_AGREE))
def test_greedy_agreement_with_hf_fp32(weight_dtype, default_model_path, hf_tokens):
    label, min_all, min_first = MIN_AGREE[weight_dtype]
    llm = LLM(str(default_model_path), policy="cpu_only", weight_dtype=weight_dtype, kv_cache_dtype="f32",
              host_kv_bytes=1 << 26)
    precision = llm.engine.runtime.executors["cpu_only"].linear.options.precision
    assert precision.label.startswith(label + "/"), precision
    outs = llm.generate(CASES, GREEDY, use_tqdm=False)
    got = [list(o.token_ids) for o in outs]
    same = sum(g == r for g, r in zip(got, hf_tokens))
    first = sum(g[0] == r[0] for g, r in zip(got, hf_tokens))
    print(f"{weight_dtype} ({precision.label}): {same}/8 prompts equal in all {N} tokens, {first}/8 first tokens")
    assert same >= min_all and first >= min_first, (weight_dtype, same, first)
    assert sum(llm.engine.stats().blocks_used.values()) == 0


def test_real_gguf_codes_are_the_converted_weights(default_model_path):
    """The default GGUF's kept Q4_1/Q8_0 codes, as OpenVINO computes with them, equal the f32 tensors
    the converter dequantized with gguf (model.safetensors)."""
    import numpy as np
    from safetensors import safe_open

    from hybridllm.models.quantized import QuantizedCheckpoint
    from hybridllm.runtime.cpu.host_precision import resolve

    from ..unit.test_quantized_weights import ov_matrix
    ckpt = QuantizedCheckpoint.open(default_model_path)
    assert ckpt is not None and set(ckpt.types.values()) == {"Q4_1", "Q8_0"}, ckpt.describe()
    prec = resolve("int4", ckpt.types, frozenset(), 0)
    with safe_open(str(default_model_path / "model.safetensors"), framework="numpy") as f:
        for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.7.mlp.down_proj.weight",
                     "model.embed_tokens.weight"):
            ref = f.get_tensor(name)
            got = ov_matrix(prec, torch.from_numpy(ref), ckpt.get(name))
            np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6, err_msg=name)
