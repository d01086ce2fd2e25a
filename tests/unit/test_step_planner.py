"""The per-step planner (policy="auto"): choices as tables of cases, memoisation, placement and the move
between tiers, and pruning the candidates to those that win somewhere."""
import pytest

from hybridllm.policy import ModelShape, StepShape
from hybridllm.policy.step_planner import StepPlanner, bucket, useful_policies
from hybridllm.kv import Tier

D, H = Tier.DEVICE, Tier.HOST

from ..helpers.profiles import const, size_dependent, synthetic

MODEL = ModelShape("m", num_layers=4, hidden=256, num_heads=4, num_kv_heads=2, head_dim=64,
                   intermediate=512, vocab=1000)
CANDS = ("gpu_only", "cpu_only", "partition")


def planner(profile=None, cands=CANDS):
    return StepPlanner(MODEL, profile or size_dependent(), cands, "f32")


def decodes(n, ctx=100):
    return StepShape(decode_seqs=n, decode_context=n * ctx)


def prefill(tokens, seqs=1):
    return StepShape(tokens, seqs, float(tokens))


NONE = StepShape()


@pytest.mark.parametrize("n, want", [(0, 0), (1, 1), (2, 2), (3, 4), (17, 32), (2048, 2048), (2049, 4096)])
def test_bucket_is_the_power_of_two_at_or_above(n, want):
    assert bucket(n) == want


@pytest.mark.parametrize("tier, pre, dec, want", [
    # Host GEMMs are cheap for few rows, dear for many; device GEMMs cost 1 ms each whatever the rows.
    (H, NONE, decodes(4), (None, "cpu_only")),
    (H, prefill(16), NONE, ("cpu_only", None)),
    (H, prefill(2048), NONE, ("partition", None)),       # on the host tier, linear work goes to the device
    (D, prefill(2048), NONE, ("gpu_only", None)),      # the device tier has one candidate
    (D, NONE, decodes(32), (None, "gpu_only")),
])
def test_choice_follows_the_tables(tier, pre, dec, want):
    c = planner().choose(tier, pre, dec)
    assert (c.prefill, c.decode) == want, c.reason
    assert tier in c.reason and (want[0] or want[1]) in c.reason


def test_a_mixed_step_runs_in_one_pass_when_that_is_cheaper():
    # Constant tables: one pass over the weights for prefill + decodes beats two passes.
    p = planner(synthetic())
    c = p.choose(H, prefill(64), decodes(8))
    assert c.prefill == c.decode
    assert c.seconds < p.choose(H, prefill(64), NONE).seconds + p.choose(H, NONE, decodes(8)).seconds
    # A long prefill takes its 2 decodes along to the device's linear layers: 2 more rows cost nothing
    # there, while a second pass on the host would cost a host pass.
    c = planner().choose(H, prefill(2048), decodes(2))
    assert (c.prefill, c.decode) == ("partition", "partition"), c.reason


def test_decisions_are_memoised_by_bucketed_shape():
    p = planner()
    a = p.choose(H, prefill(100), decodes(5, ctx=300))
    b = p.choose(H, prefill(120), decodes(7, ctx=500))      # same buckets: 128 tokens, 8 seqs, 512 ctx
    assert a is b and len(p._steps) == 1
    assert p.choose(H, prefill(200), decodes(5, ctx=300)) is not a
    assert p.place(300, 100, 3) is p.place(500, 128, 4)


def test_long_prompts_prefill_on_the_device_and_decode_on_the_host():
    p = planner()
    short, long = p.place(16, 64, 8), p.place(1500, 64, 8)
    assert (short.prefill_tier, short.decode_tier) == (H, H), short.reason
    assert (long.prefill_tier, long.decode_tier) == (D, H), long.reason
    assert "move" in long.reason


def test_a_dear_move_keeps_the_kv_where_the_prefill_wrote_it():
    p = planner(size_dependent(d2h_pinned=1.0, h2d_pinned=1.0))    # 1 byte/s between the tiers
    long = p.place(1500, 64, 8)
    assert long.prefill_tier == long.decode_tier == D, long.reason


def test_useful_policies_drop_candidates_that_never_win():
    cheap_host = synthetic(host_gemm=const(1e-6), host_attention_decode={"f32": const(1e-6)},
                           host_attention_prefill={"f32": const(1e-6)})
    assert useful_policies(planner(cheap_host), 2048, 64, 4096) == ("cpu_only",)
    assert set(useful_policies(planner(), 2048, 64, 4096)) == {"gpu_only", "cpu_only", "partition"}


def test_bad_candidates_and_tiers_are_named():
    with pytest.raises(ValueError, match="candidates: 'neo' is not a plannable policy"):
        planner(cands=("gpu_only", "neo"))
    with pytest.raises(ValueError, match="no candidate policy keeps KV on the 'device' tier"):
        planner(cands=("cpu_only",)).choose(D, prefill(16), NONE)


def test_a_host_hit_is_promoted_when_the_copy_beats_the_recompute_else_placed_where_it_is():
    from hybridllm.policy import Table2D
    # Device GEMMs cost by rows (a long prefill is dear), host GEMMs dearer still: prefill on the device.
    dev = Table2D((1.0, 4096.0), (1.0, 1e10), ((1e-4, 1e-4), (1.0, 1.0)), "device_gemm")
    host = Table2D((1.0, 4096.0), (1.0, 1e10), ((1e-3, 1e-3), (10.0, 10.0)), "host_gemm")
    fast = planner(size_dependent(device_gemm=dev, host_gemm=host), ("gpu_only", "cpu_only"))
    p = fast.place(1500, 4, 1, device_hit=0, host_hit=1472, promotable=1472)
    assert p.prefill_tier == D and p.promote and "promoting ~" in p.reason, p.reason
    assert not fast.place(1500, 4, 1).promote                 # nothing cached on the host: nothing to promote
    # Copies at 1 byte/s: never promote; with the host hit covering the prompt, prefill where it is.
    slow = planner(size_dependent(device_gemm=dev, host_gemm=host, h2d_pinned=1.0, d2h_pinned=1.0),
                   ("gpu_only", "cpu_only"))
    q = slow.place(1500, 4, 1, device_hit=0, host_hit=1472, promotable=1472)
    assert not q.promote and q.prefill_tier == H, q.reason
