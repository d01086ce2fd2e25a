"""The lean decode path on a GPU: the Triton kernels compiled (bf16 and f32) against their torch forms,
and decode steps replayed from CUDA graphs giving HF's greedy tokens, graphs on and off.

Skipped where there is no CUDA GPU (CI has none: tests/unit/test_device_kernels.py checks the kernels
under Triton's interpreter and tests/system/test_decode_graphs.py the padded path on the CPU).
Tolerances: f32 1e-4 (TF32 is off in the kernel for f32), bf16 2e-2.
"""
import math

import pytest
import torch

from hybridllm import LLM, SamplingParams
from hybridllm.kernels import DeviceOps
from hybridllm.kv import Tier

from ..helpers.tiny_models import tiny_with_greedy
from .common import PROMPTS, SHAPE

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; this machine has none")

KV = 64 << 20
GREEDY = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_with_greedy(tmp_path_factory.mktemp("llama"), PROMPTS, GREEDY.max_tokens, seed=5, **SHAPE)


def tokens(llm):
    return [list(o.token_ids) for o in llm.generate(PROMPTS, GREEDY, use_tqdm=False)]


@pytest.mark.parametrize("kernels", ["triton", "torch"])
def test_graphs_on_and_off_match_hf(model, kernels):
    folder, want = model
    eager = LLM(str(folder), policy="gpu_only", enforce_eager=True, device_kernels=kernels, device_kv_bytes=KV)
    assert eager.engine.runtime.executors["gpu_only"].graphs is None
    assert tokens(eager) == want
    llm = LLM(str(folder), policy="gpu_only", device_kernels=kernels, max_num_seqs=8, device_kv_bytes=KV)
    graphs = llm.engine.runtime.executors["gpu_only"].graphs
    assert graphs is not None and sorted(graphs.graphs) == [1, 2, 4, 8]
    assert tokens(llm) == want
    assert sum(graphs.steps.values()) > 0 and len(graphs.steps) > 1, graphs.steps
    assert llm.engine.kv.num_used(Tier.DEVICE) == 0


def test_graphs_in_bfloat16_agree_with_eager(model):
    folder, _ = model
    eager = tokens(LLM(str(folder), policy="gpu_only", dtype="bfloat16", enforce_eager=True, device_kv_bytes=KV))
    graphs = tokens(LLM(str(folder), policy="gpu_only", dtype="bfloat16", device_kv_bytes=KV))
    # Same kernels, same order of arithmetic per row except the attention: the first tokens agree.
    assert [t[:4] for t in graphs] == [t[:4] for t in eager]


def _cuda_cases(dtype):
    g = torch.Generator(device="cuda").manual_seed(0)
    nb, kvh, bs, d, h = 64, 8, 16, 128, 32
    kc = torch.randn(nb, kvh, bs, d, device="cuda", generator=g).to(dtype)
    vc = torch.randn(nb, kvh, bs, d, device="cuda", generator=g).to(dtype)
    lens = [1, 15, 16, 17, 200, 64]
    perm = torch.randperm(nb, device="cuda", generator=g).tolist()
    rows, at = [], 0
    for n in lens:
        k = -(-n // bs)
        rows.append(perm[at:at + k] + [0] * (16 - k))
        at += k
    tables = torch.tensor(rows, dtype=torch.int64, device="cuda")
    q = torch.randn(len(lens), h, d, device="cuda", generator=g).to(dtype)
    return q, kc, vc, tables, torch.tensor(lens, dtype=torch.int32, device="cuda")


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("window", [None, 24])
def test_compiled_kernels_match_torch(dtype, tol, window):
    tri, ref = DeviceOps("triton"), DeviceOps("torch")
    q, kc, vc, tables, lens = _cuda_cases(dtype)
    scale = 1 / math.sqrt(q.shape[-1])
    torch.testing.assert_close(tri.paged_decode(q, kc, vc, tables, lens, scale, window).float(),
                               ref.paged_decode(q, kc, vc, tables, lens, scale, window).float(), atol=tol, rtol=tol)
    x, r = torch.randn(7, 4096, device="cuda").to(dtype), torch.randn(7, 4096, device="cuda").to(dtype)
    w = torch.randn(4096, device="cuda").to(dtype)
    for a, b in zip(tri.add_rms_norm(x, r, w, 1e-5), ref.add_rms_norm(x, r, w, 1e-5)):
        torch.testing.assert_close(a.float(), b.float(), atol=tol, rtol=tol)
    y = torch.randn(7, 2 * 14336, device="cuda").to(dtype)
    torch.testing.assert_close(tri.silu_mul(y).float(), ref.silu_mul(y).float(), atol=tol, rtol=tol)
    qkv = torch.randn(5, 48 * 128, device="cuda").to(dtype)
    pos = torch.tensor([0, 1, 100, 4000, 7], device="cuda")
    slots = torch.tensor([0, 17, 33, 500, 1023], device="cuda")
    # RoPE tables repeat their first half (cat(freqs, freqs)); the kernel reads one half.
    cos, sin = (torch.randn(8192, 64, device="cuda").repeat(1, 2).to(dtype) for _ in range(2))
    caches = [(kc.clone(), vc.clone()) for _ in range(2)]
    qa = tri.rope_store(qkv, pos, slots, cos, sin, *caches[0], 32, 8, 128)
    qb = ref.rope_store(qkv, pos, slots, cos, sin, *caches[1], 32, 8, 128)
    torch.testing.assert_close(qa.float(), qb.float(), atol=tol, rtol=tol)
    torch.testing.assert_close(caches[0][0].float(), caches[1][0].float(), atol=tol, rtol=tol)
    assert torch.equal(caches[0][1], caches[1][1])
