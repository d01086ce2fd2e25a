"""NeoScheduler invariants (hypothesis) and the load-aware host sub-batch decision (tables of cases)."""
import pytest
from hypothesis import given, settings, strategies as st

from hybridllm.kv import BlockPool, BlockTables, Tier

from hybridllm.policy import ModelShape, StepShape, Table2D
from hybridllm.policy.neo import HostCandidate, NeoCostTables, STARVATION_STEPS, choose_host_batch, decodes
from hybridllm.scheduler import NeoScheduler

from ..helpers.profiles import synthetic
from ..helpers.scheduling import placement, req, run_step



def make(dev_blocks, host_blocks, max_num_seqs=8, budget=64, costs=None):
    kv = BlockTables({Tier.DEVICE: BlockPool(dev_blocks, 16, "device"), Tier.HOST: BlockPool(host_blocks, 16, "host")})
    return NeoScheduler(kv, max_num_seqs, budget, costs), kv


def test_prefill_goes_to_host_tier_when_device_is_full():
    sched, kv = make(dev_blocks=3, host_blocks=10)
    sched.add(req("a", 30, max_tokens=4))      # 31 tokens -> 2 blocks on the device, leaves 1 (reserved)
    sched.add(req("b", 20, max_tokens=4))
    out = sched.schedule()
    placed_on = placement(out)
    assert placed_on == {"a": "device", "b": "device_to_host"}
    assert kv.tier_of("a") is Tier.DEVICE and kv.tier_of("b") is Tier.HOST
    run_step(sched, out)
    out = sched.schedule()
    assert placement(out) == {"a": "device", "b": "host"}


def test_device_shortage_swaps_newest_out_instead_of_preempting():
    sched, kv = make(dev_blocks=4, host_blocks=10, budget=64)
    sched.add(req("old", 15, max_tokens=8))
    run_step(sched, sched.schedule())
    sched.add(req("new", 15, max_tokens=8))
    run_step(sched, sched.schedule())
    assert kv.tier_of("new") is Tier.DEVICE and kv.num_free(Tier.DEVICE) == 2
    kv.pool(Tier.DEVICE).allocate(2, "hog")
    # "old" reaches its 17th token and needs a second block; the newest device request makes room.
    out = sched.schedule()
    assert out.preempted == ()
    assert [(c.request_id, c.src_tier, c.dst_tier) for c in out.copies] == [("new", Tier.DEVICE, Tier.HOST)]
    assert placement(out) == {"old": "device", "new": "host"}
    assert kv.tier_of("new") is Tier.HOST and sched.requests["new"].num_computed_tokens == 15


def test_swap_in_waits_for_a_quarter_of_the_device_tier_to_stay_free():
    sched, kv = make(dev_blocks=8, host_blocks=10)
    r = req("h", 40, max_tokens=4)
    sched.add(r)
    sched.waiting.clear()
    sched._run(r)
    assert kv.allocate_slots("h", 40, Tier.HOST)
    r.num_computed_tokens = 40
    r.output_token_ids.append(7)
    hog = kv.pool(Tier.DEVICE).allocate(4, "hog")          # 4 free: 4 - 3 needed < 2 (a quarter of 8)
    out = sched.schedule()
    assert out.copies == () and kv.tier_of("h") is Tier.HOST
    kv.pool(Tier.DEVICE).free(hog, "hog")                   # 8 free: 8 - 3 >= 2
    out = sched.schedule()
    assert [(c.request_id, c.dst_tier) for c in out.copies] == [("h", Tier.DEVICE)]
    assert placement(out) == {"h": "device"}


ops = st.lists(st.one_of(
    st.tuples(st.just("add"), st.integers(1, 60), st.integers(1, 40)),
    st.tuples(st.just("step"), st.just(0), st.just(0)),
    st.tuples(st.just("abort"), st.integers(0, 30), st.just(0)),
), min_size=1, max_size=80)


@settings(max_examples=150, deadline=None)
@given(ops=ops, dev=st.integers(2, 10), host=st.integers(6, 16), seqs=st.integers(1, 6), budget=st.integers(16, 96))
def test_random_arrivals_keep_neo_invariants(ops, dev, host, seqs, budget):
    sched, kv = make(dev, host, seqs, budget)
    biggest = max(dev, host) * 16
    added = []

    def check(out):
        assert sum(len(s.token_ids) for s in out.scheduled) <= budget and len(sched.running) <= seqs
        ids = [s.request_id for s in out.scheduled]
        assert len(ids) == len(set(ids)) and not set(ids) & set(out.preempted)
        attn = placement(out)
        assert sorted(attn) == sorted(ids)               # every scheduled sequence is in exactly one sub-batch
        assert sum(len(b.seqs) for b in out.batches) == len(ids)
        for b in out.batches:
            assert b.policy == "neo" and all(kv.tier_of(s.request_id) is b.tier for s in b.seqs)
        for s in out.scheduled:
            tier = kv.tier_of(s.request_id)
            assert (tier is Tier.HOST) == (attn[s.request_id] in ("host", "device_to_host"))
            assert attn[s.request_id] != "device_to_host" or s.num_computed_tokens == 0
            assert len(kv.block_table(s.request_id)) * 16 >= s.num_computed_tokens + len(s.token_ids)
        for c in out.copies:
            assert c.src_tier != c.dst_tier and len(c.dst_blocks) >= len(c.src_blocks)
        kv.check()
        for t in (Tier.DEVICE, Tier.HOST):
            p = kv.pool(t)
            assert p.num_free + p.num_used == p.num_blocks

    for op, a, b in ops:
        if op == "add":
            if a + b > biggest:
                continue
            rid = f"r{len(added)}"
            added.append(rid)
            sched.add(req(rid, a, b))
        elif op == "abort" and added:
            sched.abort(added[a % len(added)])
            kv.check()
        else:
            out = sched.schedule()
            check(out)
            run_step(sched, out)
    for _ in range(20_000):
        if not sched.has_unfinished():
            break
        out = sched.schedule()
        assert not out.empty, "NEO scheduler stalled with work left"
        check(out)
        run_step(sched, out)
    assert not sched.has_unfinished()
    assert kv.num_used(Tier.DEVICE) == 0 and kv.num_used(Tier.HOST) == 0


# -- load-aware decision ---------------------------------------------------------

MODEL = ModelShape("m", num_layers=4, hidden=1024, num_heads=8, num_kv_heads=8, head_dim=128,
                   intermediate=4096, vocab=1000)


def costs(host_decode: Table2D, **over):
    return NeoCostTables(MODEL, synthetic(host_attention_decode={"f32": host_decode}, **over), "f32")


def lin(per_seq_s):
    """Host decode attention that costs per_seq_s per sequence per layer."""
    return Table2D.from_function((1, 2, 4, 8, 16, 32, 64), (1.0, 1e12), lambda s, y: per_seq_s * s, "h")


A = StepShape(prefill_tokens=197, prefill_seqs=1, prefill_context=99, decode_seqs=3, decode_context=600)
CANDS = [HostCandidate(f"h{i}", 500) for i in range(10)]


def test_host_decodes_join_while_they_hide_under_device_work():
    # Device: A's 4 layers x (4 GEMMs x 1 ms + decode 2 ms + prefill 4 ms attention) + 1 ms LM head = 41 ms,
    # plus B's own linear calls (4 x 4 x 1 ms + 1 ms LM head = 17 ms) once B is not empty: 58 ms.
    # Host: 4 layers x 1.5 ms per sequence (+ ~16 us of PCIe each) = ~6.07 ms per sequence.
    choice = choose_host_batch(A, CANDS, costs(lin(1.5e-3)), max_seqs=64)
    assert choice.chosen == tuple(f"h{i}" for i in range(9))  # a tenth (60.7 ms) would outlast the device
    assert choice.device_only_s == pytest.approx(41e-3, rel=0.01)
    assert (4 + 9) / choice.pipelined_s > 4 / choice.device_only_s     # more tokens per second


def test_cheap_host_attention_takes_every_candidate_up_to_max_seqs():
    choice = choose_host_batch(A, CANDS, costs(lin(1e-6)), max_seqs=9)
    assert choice.chosen == tuple(f"h{i}" for i in range(5))   # 9 seqs minus A's 4


def test_expensive_host_attention_means_a_device_only_step():
    choice = choose_host_batch(A, CANDS, costs(lin(1.0)), max_seqs=64)
    assert choice.chosen == () and choice.device_only_s > 0


def test_starving_host_decode_joins_anyway():
    cands = [HostCandidate("young", 500), HostCandidate("old", 500, skipped=STARVATION_STEPS)]
    choice = choose_host_batch(A, cands, costs(lin(1.0)), max_seqs=64)
    assert choice.chosen == ("old",)


def test_no_device_work_runs_host_only():
    idle = StepShape()
    choice = choose_host_batch(idle, CANDS[:3], costs(lin(1.0)), max_seqs=64)
    assert choice.chosen == ("h0", "h1", "h2") and "host-only" in choice.reason


def test_same_silicon_never_overlaps():
    c = costs(lin(1e-3), device_is_host=True)
    assert c.step(A, 2, 1000) == c.step(A, 2, 1000)
    assert c.step(A, 2, 1000) > c.step(A, 0, 0) + c.host_attention(2, 1000) - 1e-12


@pytest.mark.parametrize("per_seq_s, placed", [(1e-6, "device_to_host"), (1.0, None)])
def test_host_tier_only_takes_requests_it_would_run(per_seq_s, placed):
    # With a profile, a request goes to the host tier only if the load-aware choice would run it
    # there next to this step's device work; otherwise it waits for device room (as under gpu_only).
    sched, kv = make(dev_blocks=3, host_blocks=10, costs=costs(lin(per_seq_s)))
    sched.add(req("a", 30, max_tokens=4))
    sched.add(req("b", 20, max_tokens=4))
    out = sched.schedule()
    placed_on = placement(out)
    assert placed_on.get("a") == "device" and placed_on.get("b") == placed
    assert (kv.has("b") and kv.tier_of("b") is Tier.HOST) == (placed is not None)
    assert [r.request_id for r in sched.waiting] == ([] if placed else ["b"])
    kv.check()


@pytest.mark.parametrize("per_seq_s, swapped", [(1e-6, True), (1.0, False)])
def test_device_shortage_swaps_out_only_what_would_run_on_the_host(per_seq_s, swapped):
    sched, kv = make(dev_blocks=4, host_blocks=10, budget=64, costs=costs(lin(per_seq_s)))
    sched.add(req("old", 15, max_tokens=8))
    run_step(sched, sched.schedule())
    sched.add(req("new", 15, max_tokens=8))
    run_step(sched, sched.schedule())
    kv.pool(Tier.DEVICE).allocate(2, "hog")
    out = sched.schedule()                      # "old" needs a second block: "new" must make room
    if swapped:
        assert out.preempted == () and [c.request_id for c in out.copies] == ["new"]
        assert kv.tier_of("new") is Tier.HOST
    else:                                       # expensive host attention: recompute later instead
        assert out.preempted == ("new",) and out.copies == ()
        assert not kv.has("new") and sched.requests["new"].num_computed_tokens == 0
    assert {s.request_id for s in out.scheduled} >= {"old"}


def test_pipeline_overhead_is_paid_per_layer_by_steps_with_host_decodes():
    base, slow = costs(lin(1e-4)), costs(lin(1e-4), extra={"host_handoff_s": 2e-3})
    assert slow.step(A, 0, 0) == base.step(A, 0, 0)
    assert slow.step(A, 3, 1500) == pytest.approx(base.step(A, 3, 1500) + MODEL.num_layers * 2e-3)
    assert slow.host_attention(3, 1500) == base.host_attention(3, 1500)


@pytest.mark.parametrize("waiting, placed", [(1, 0), (6, 6)])
def test_waiting_requests_go_to_the_host_together_when_one_alone_would_not_pay(waiting, placed):
    # Device-only step of 8 decodes: 4 layers x (4 GEMMs x 1 ms + 2 ms attention) + 1 ms LM head = 25 ms.
    # A host sub-batch adds its own linear calls (17 ms): one host decode lowers tokens/s (9 / 42 ms
    # < 8 / 25 ms), six raise it (14 / 42 ms). Asked one at a time, none would ever be placed.
    c = costs(lin(1e-6))
    work = decodes(8, 8 * 11)
    assert choose_host_batch(work, CANDS[:1], c, 32).chosen == ()
    assert len(choose_host_batch(work, CANDS[:6], c, 32).chosen) == 6
    sched, kv = make(dev_blocks=16, host_blocks=40, max_num_seqs=32, budget=256, costs=c)
    for i in range(8):
        sched.add(req(f"d{i}", 10, max_tokens=50))
    run_step(sched, sched.schedule())                    # 8 prefills, each in one device block
    assert kv.num_used(Tier.DEVICE) == 8
    for i in range(waiting):
        sched.add(req(f"w{i}", 10, max_tokens=50))       # the device tier's rest is growth room
    out = sched.schedule()
    to_host = [rid for rid, a in placement(out).items() if a == "device_to_host"]
    assert len(to_host) == placed and len(sched.waiting) == waiting - placed
    assert kv.num_used(Tier.HOST) == placed
    kv.check()
