"""Scheduler invariants and decisions, driven without a model."""
from hypothesis import given, settings, strategies as st

from hybridllm.scheduler import RequestStatus, Scheduler
from hybridllm.kv import BlockPool, BlockTables, Tier

from ..helpers.scheduling import placement, req, run_step



def make(num_blocks=8, max_num_seqs=4, budget=64):
    kv = BlockTables({Tier.DEVICE: BlockPool(num_blocks, 16)})
    return Scheduler(kv, max_num_seqs, budget), kv


def test_prefill_and_decode_share_a_step_under_the_budget():
    sched, kv = make(budget=40)
    sched.add(req("a", 10))
    out = sched.schedule()
    assert [(s.request_id, len(s.token_ids), s.sample) for s in out.scheduled] == [("a", 10, True)]
    run_step(sched, out)
    sched.add(req("b", 50))
    out = sched.schedule()
    # a decodes one token; b gets the remaining 39 tokens of budget as a first chunk
    assert [(s.request_id, len(s.token_ids), s.num_computed_tokens, s.sample) for s in out.scheduled] == [
        ("a", 1, 10, True), ("b", 39, 0, False)]
    run_step(sched, out)
    out = sched.schedule()
    assert [(s.request_id, len(s.token_ids), s.num_computed_tokens, s.sample) for s in out.scheduled] == [
        ("a", 1, 11, True), ("b", 11, 39, True)]
    kv.check()


def test_max_num_seqs_limits_admission():
    sched, _ = make(num_blocks=20, max_num_seqs=2)
    for i in range(3):
        sched.add(req(f"r{i}", 4))
    out = sched.schedule()
    assert [s.request_id for s in out.scheduled] == ["r0", "r1"]
    assert [r.request_id for r in sched.waiting] == ["r2"]


def test_newest_running_request_is_preempted_and_recomputed():
    sched, kv = make(num_blocks=2, budget=64)
    sched.add(req("old", 16, max_tokens=8))
    sched.add(req("new", 16, max_tokens=8))
    out = sched.schedule()
    assert [s.request_id for s in out.scheduled] == ["old", "new"]
    run_step(sched, out)
    # Both need a second block for their 17th token; only the older one keeps running.
    out = sched.schedule()
    assert out.preempted == ("new",)
    assert [s.request_id for s in out.scheduled] == ["old"]
    new = sched.requests["new"]
    assert new.status is RequestStatus.WAITING and new.num_computed_tokens == 0
    assert kv.block_table("new") == [] and kv.num_used() == 2
    kv.check()


def test_preempted_request_recomputes_prompt_and_outputs():
    sched, _ = make(num_blocks=2)
    r = req("a", 5)
    sched.add(r)
    run_step(sched, sched.schedule())
    sched._preempt(sched._newest_running())
    out = sched.schedule()
    (s,) = out.scheduled
    assert s.token_ids == tuple(range(1, 6)) + (5,) and s.num_computed_tokens == 0 and s.sample


def test_abort_frees_blocks_from_waiting_and_running():
    sched, kv = make(num_blocks=4, max_num_seqs=1)
    sched.add(req("a", 20))
    sched.add(req("b", 20))
    sched.schedule()
    assert kv.num_used() == 2
    assert sched.abort("a").status is RequestStatus.FINISHED_ABORTED
    assert sched.abort("b") is not None and sched.abort("b") is None
    assert kv.num_used() == 0 and not sched.has_unfinished()
    kv.check()


ops = st.lists(st.one_of(
    st.tuples(st.just("add"), st.integers(1, 70), st.integers(1, 20)),
    st.tuples(st.just("step"), st.just(0), st.just(0)),
    st.tuples(st.just("abort"), st.integers(0, 30), st.just(0)),
), min_size=1, max_size=80)


@settings(max_examples=150, deadline=None)
@given(ops=ops, num_blocks=st.integers(6, 16), max_num_seqs=st.integers(1, 6), budget=st.integers(16, 96))
def test_random_arrivals_aborts_and_finishes_keep_invariants(ops, num_blocks, max_num_seqs, budget):
    sched, kv = make(num_blocks, max_num_seqs, budget)
    capacity = num_blocks * 16
    added = []

    def check_step(out):
        assert sum(len(s.token_ids) for s in out.scheduled) <= budget
        assert len(sched.running) <= max_num_seqs
        ids = [s.request_id for s in out.scheduled]
        assert len(ids) == len(set(ids))
        for s in out.scheduled:
            r = sched.requests[s.request_id]
            assert r.status is RequestStatus.RUNNING
            assert s.num_computed_tokens == r.num_computed_tokens
            assert len(kv.block_table(s.request_id)) * 16 >= s.num_computed_tokens + len(s.token_ids)
        assert not set(ids) & set(out.preempted)
        assert not {r.request_id for r in sched.waiting} & set(sched.running)
        kv.check()
        pool = kv.pool()
        assert pool.num_free + pool.num_used == pool.num_blocks

    for op, a, b in ops:
        if op == "add":
            prompt, max_tokens = a, b
            if prompt + max_tokens > capacity:          # the engine refuses these up front
                continue
            rid = f"r{len(added)}"
            added.append(rid)
            sched.add(req(rid, prompt, max_tokens))
        elif op == "abort" and added:
            sched.abort(added[a % len(added)])
            kv.check()
        else:
            out = sched.schedule()
            check_step(out)
            run_step(sched, out)
    # Drain: everything left must finish, and every block come back.
    for _ in range(10_000):
        if not sched.has_unfinished():
            break
        out = sched.schedule()
        assert not out.empty, "scheduler stalled with work left"
        check_step(out)
        run_step(sched, out)
    assert not sched.has_unfinished()
    assert kv.num_used() == 0 and kv.num_free() == num_blocks


def test_fixed_phase_policies_move_the_kv_once_after_prefill():
    # gpu_only prefills into the device tier; cpu_only decodes need the KV on the host: the first decode
    # step emits one device -> host copy of every block, later steps none, and the sub-batches say so.
    kv = BlockTables({Tier.DEVICE: BlockPool(8, 16), Tier.HOST: BlockPool(8, 16)})
    sched = Scheduler(kv, 4, 64, prefill_policy="gpu_only", decode_policy="cpu_only")
    sched.add(req("a", 20, max_tokens=3))
    out = sched.schedule()
    assert [(b.policy, b.tier) for b in out.batches] == [("gpu_only", Tier.DEVICE)] and out.copies == ()
    assert kv.num_used(Tier.DEVICE) == 2 and kv.num_used(Tier.HOST) == 0
    run_step(sched, out)
    out = sched.schedule()
    (copy,) = out.copies
    assert (copy.request_id, copy.src_tier, copy.dst_tier, len(copy.src_blocks)) == ("a", Tier.DEVICE, Tier.HOST, 2)
    assert list(copy.dst_blocks) == list(out.scheduled[0].block_table)
    assert [(b.policy, b.tier) for b in out.batches] == [("cpu_only", Tier.HOST)]
    assert kv.num_used(Tier.DEVICE) == 0 and kv.num_used(Tier.HOST) == 2
    run_step(sched, out)
    out = sched.schedule()
    assert out.copies == () and [(b.policy, b.tier) for b in out.batches] == [("cpu_only", Tier.HOST)]
    run_step(sched, out)
    assert not sched.has("a") and sched.num_running == 0
    assert kv.num_used(Tier.DEVICE) == kv.num_used(Tier.HOST) == 0
    kv.check()
