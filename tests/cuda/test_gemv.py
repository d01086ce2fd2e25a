"""The split-K GEMV on a GPU: compiled against F.linear at Llama-3-8B's qkv / o_proj shapes, the start-up
table, and decode steps (graphs on) through the GEMV everywhere still giving HF's greedy tokens.

Skipped where there is no CUDA GPU (CI checks the kernel under Triton's interpreter:
tests/unit/device_kernel_checks.py). Tolerance: one rounding of the f32 sum to bf16; f32 1e-4.
"""
import pytest
import torch
import torch.nn.functional as F

from hybridllm import LLM, SamplingParams
from hybridllm.kernels import linear as gemv_choice
from hybridllm.kernels.linear import Tile, decode_gemv_shapes, measure_table

from ..helpers.tiny_models import tiny_with_greedy
from .common import PROMPTS, SHAPE

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; this machine has none")
GREEDY = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 8e-3), (torch.float32, 1e-4)])
@pytest.mark.parametrize("m", [1, 2, 8])
def test_compiled_splitk_matches_linear_at_llama_shapes(dtype, tol, m):
    from hybridllm.kernels.splitk_gemv import splitk_gemv
    g = torch.Generator(device="cuda").manual_seed(m)
    for n, k in decode_gemv_shapes(32, 8, 128, 4096).values():
        x = torch.randn(m, k, device="cuda", generator=g).to(dtype)
        w = (torch.randn(n, k, device="cuda", generator=g) * 0.02).to(dtype)
        ref = F.linear(x.float(), w.float())
        for t in (Tile(16, 256, 4), Tile(32, 128, 8), Tile(64, 128, 4)):
            got = splitk_gemv(x, w, None, t.block_n, t.block_k, t.split, t.warps)
            torch.testing.assert_close(got.float(), ref, atol=tol * ref.abs().max().item(), rtol=tol)


def test_startup_table_times_every_shape_and_row_count():
    table = measure_table({"o_proj": (4096, 4096)}, torch.bfloat16, torch.device("cuda"), rows=(1, 2))
    assert [(r[0], r[3]) for r in table.report] == [("o_proj", 1), ("o_proj", 2)]
    assert all(r[4] > 0 and 0 < r[5] <= r[4] * 1.5 for r in table.report), table.report
    assert set(table.choices) <= {(4096, 4096, 1), (4096, 4096, 2)}


def test_decode_graphs_through_the_gemv_match_hf(tmp_path, monkeypatch):
    folder, want = tiny_with_greedy(tmp_path / "llama", PROMPTS, GREEDY.max_tokens, seed=5, **SHAPE)
    # Every tile that ran "wins", so each small shape and bucket takes the GEMV inside the captured graphs.
    monkeypatch.setattr(gemv_choice, "choose", lambda times, margin=0: next(t for t in times if t is not None))
    llm = LLM(str(folder), policy="gpu_only", max_num_seqs=8, device_kv_bytes=64 << 20)
    ops = llm.engine.model.ops
    assert ops.gemv is not None and len(ops.gemv.choices) == 2 * 4, ops.gemv.report
    assert [list(o.token_ids) for o in llm.generate(PROMPTS, GREEDY, use_tqdm=False)] == want
