"""Prefix caching in the pure layers: the hash chain, the pool's LRU of cached blocks, and the
schedulers' hits, driven without a model (hypothesis state machine for the block invariants)."""
import pytest
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from hybridllm.kv import BlockPool, BlockTables, KVLeakError, Tier, block_keys, extend_chain, root_hash
from hybridllm.sampling_params import SamplingParams
from hybridllm.scheduler import NeoScheduler, Request, RequestStatus, Scheduler

from ..helpers.scheduling import placement, run_step

SHARED = list(range(100, 140))          # a 40-token shared prefix: 2 full 16-token blocks and 8 more


def req(rid, ids, max_tokens=2, salt=None):
    return Request(rid, None, list(ids), SamplingParams(max_tokens=max_tokens, cache_salt=salt),
                   detokenizer=None, generator=None, max_total_tokens=10**9)


def make(num_blocks=16, budget=256, caching=True):
    kv = BlockTables({Tier.DEVICE: BlockPool(num_blocks, 16)})
    return Scheduler(kv, 8, budget, prefix_caching=caching, model_id="m"), kv


def drain(sched):
    while sched.has_unfinished():
        run_step(sched, sched.schedule())


def first_chunk(sched, r):
    sched.add(r)
    out = sched.schedule()
    (s,) = [s for s in out.scheduled if s.request_id == r.request_id]
    return out, s


def test_chain_depends_on_every_earlier_token_the_model_and_the_salt():
    ids = list(range(64))
    tok = lambda a, b: ids[a:b]
    base = extend_chain([], root_hash("m", None), tok, 64, 16)
    assert len(base) == 4 and len(set(base)) == 4
    changed = list(ids)
    changed[3] = 999
    other = extend_chain([], root_hash("m", None), lambda a, b: changed[a:b], 64, 16)
    assert all(x != y for x, y in zip(base, other))          # one early token changes every later name
    assert extend_chain([], root_hash("m2", None), tok, 64, 16)[0] != base[0]
    assert extend_chain([], root_hash("m", "tenant"), tok, 64, 16)[0] != base[0]
    assert extend_chain([], root_hash("m", None), tok, 47, 16) == base[:2]     # partial chunks are not named
    # A 32-token block is named by its second chunk's hash: both tiers share one chain.
    assert block_keys(base, 32, 16) == [base[1], base[3]] and block_keys(base, 16, 16) == base


def test_pool_keeps_freed_named_blocks_and_evicts_least_recently_used_first():
    pool = BlockPool(4, 16)
    a = pool.allocate(2, "a")
    b = pool.allocate(1, "b")
    pool.register(a[0], b"x0")
    pool.register(a[1], b"x1")
    pool.register(b[0], b"y0")
    assert not pool.register(b[0], b"other") and not pool.register(a[0], b"y0")   # one name per block and per prefix
    pool.free(a, "a")
    pool.free(b, "b")
    assert (pool.num_empty, pool.num_cached, pool.num_used, pool.num_free) == (1, 3, 0, 4)
    assert pool.lookup([b"x0", b"x1", b"zz"]) == a and pool.lookup([b"x1"]) == [a[1]]
    pool.check()
    got = pool.allocate(2, "c")                  # the empty block first, then the least recently freed (a's tail)
    assert got[1] == a[1] and pool.stats.evictions == 1 and pool.evicted == [(b"x1", a[1], None, 0)]
    assert pool.lookup([b"x0", b"x1"]) == [a[0]]
    pool.share([a[0]], "d")                      # a cached block leaves the LRU when shared
    assert pool.refcount(a[0]) == 1 and pool.num_cached == 1
    with pytest.raises(KVLeakError, match="only a used block can be cached"):
        BlockPool(2, 16).register(0, b"k")
    pool.check()


def test_hit_skips_the_cached_full_blocks_and_gives_the_same_token_ids():
    sched, kv = make()
    sched.add(req("a", SHARED + [1, 2, 3]))
    drain(sched)
    assert kv.num_cached() == 2 and kv.num_used() == 0       # 43 prompt + 1 output token: 2 full blocks named
    out, s = first_chunk(sched, req("b", SHARED + [7]))
    assert s.num_computed_tokens == 32 and s.token_ids == tuple(SHARED[32:] + [7])
    assert s.block_table[:2] == kv.block_table("b")[:2] and kv.num_cached() == 0
    assert sched.cache.tier("device").hits == 32 and sched.cache.tier("device").queries == 43 + 41
    kv.check()


def test_a_prefix_ending_mid_block_hits_only_whole_blocks():
    sched, kv = make()
    sched.add(req("a", SHARED))
    drain(sched)
    _, s = first_chunk(sched, req("b", SHARED[:24] + [9, 9]))      # shares 24 tokens: one whole block
    assert s.num_computed_tokens == 16 and s.token_ids == tuple(SHARED[16:24] + [9, 9])


def test_a_prompt_equal_to_a_cached_one_still_runs_its_last_token():
    sched, kv = make()
    sched.add(req("a", SHARED[:32]))             # exactly two blocks
    drain(sched)
    _, s = first_chunk(sched, req("b", SHARED[:32]))
    # The last token's logits are needed, so only the first block is a hit and 16 tokens run.
    assert s.num_computed_tokens == 16 and len(s.token_ids) == 16 and s.sample
    _, s = first_chunk(sched, req("c", SHARED[:33]))
    assert s.num_computed_tokens == 32 and s.token_ids == (SHARED[32],) and s.sample


def test_salted_requests_never_hit_another_salts_blocks():
    sched, kv = make()
    sched.add(req("a", SHARED, salt="tenant-a"))
    drain(sched)
    for rid, salt in (("b", "tenant-b"), ("c", None)):
        _, s = first_chunk(sched, req(rid, SHARED, salt=salt))
        assert s.num_computed_tokens == 0
    _, s = first_chunk(sched, req("d", SHARED, salt="tenant-a"))
    assert s.num_computed_tokens == 32


def test_cancelling_a_request_that_shares_blocks_frees_only_its_own():
    sched, kv = make()
    sched.add(req("a", SHARED + [1] * 30, max_tokens=8))
    run_step(sched, sched.schedule())                        # a is running; its 4 full blocks are named
    _, s = first_chunk(sched, req("b", SHARED + [5] * 20))
    shared = kv.block_table("b")[:2]
    assert s.num_computed_tokens == 32 and shared == kv.block_table("a")[:2]
    own = kv.block_table("b")[2:]
    assert [kv.pool().refcount(x) for x in shared] == [2, 2]
    sched.abort("b")
    assert [kv.pool().refcount(x) for x in shared] == [1, 1] and kv.block_table("a")[:2] == shared
    assert all(kv.pool().refcount(x) == 0 for x in own) and kv.has("a")
    kv.check()


def test_caching_off_never_hits_and_names_nothing():
    sched, kv = make(caching=False)
    sched.add(req("a", SHARED))
    drain(sched)
    _, s = first_chunk(sched, req("b", SHARED))
    assert s.num_computed_tokens == 0 and kv.num_cached() == 0


def test_skip_cache_hits_prefills_everything():
    sched, kv = make()
    sched.add(req("a", SHARED))
    drain(sched)
    r = req("b", SHARED)
    r.skip_cache_hits = True                     # e.g. prompt logprobs: every prompt position's logits
    _, s = first_chunk(sched, r)
    assert s.num_computed_tokens == 0


def test_a_preempted_request_resumes_from_its_own_cached_blocks():
    sched, kv = make(num_blocks=5, budget=64)
    sched.add(req("old", list(range(1, 33)), max_tokens=40))
    sched.add(req("new", list(range(200, 232)), max_tokens=40))
    run_step(sched, sched.schedule())
    for _ in range(20):                          # both grow until the newest is preempted
        out = sched.schedule()
        if out.preempted:
            break
        run_step(sched, out)
    assert out.preempted == ("new",) and kv.num_cached() >= 2
    run_step(sched, out)
    sched.abort("old")
    out = sched.schedule()
    (s,) = out.scheduled
    assert s.request_id == "new" and s.num_computed_tokens >= 32
    kv.check()


def test_neo_places_a_host_hit_on_the_host_where_host_attention_reads_it():
    kv = BlockTables({Tier.DEVICE: BlockPool(3, 16), Tier.HOST: BlockPool(16, 32)})
    sched = NeoScheduler(kv, 8, 256, prefix_caching=True, model_id="m")
    sched.add(req("a", SHARED + [1] * 40))       # too long for the device tier: prefilled onto the host
    out = sched.schedule()
    assert placement(out) == {"a": "device_to_host"}
    drain(sched)
    assert kv.num_cached(Tier.HOST) == 2
    out, s = first_chunk(sched, req("b", SHARED + [1] * 30))
    assert kv.tier_of("b") is Tier.HOST and s.num_computed_tokens == 64 and placement(out) == {"b": "host"}
    assert sched.cache.tier("host").hits == 64
    kv.check()


class CacheMachine(RuleBasedStateMachine):
    """Random add / step / finish / cancel / preempt / evict over prompts drawn from a few shared prefixes;
    the books must stay exact: free + used + cached == total, refcount == holders, no block owned twice."""

    def __init__(self):
        super().__init__()
        self.sched, self.kv = make(num_blocks=10, budget=48)
        self.next_id = 0

    @rule(prefix=st.sampled_from([SHARED, SHARED[:20], list(range(300, 350))]), tail=st.integers(0, 30),
          salt=st.sampled_from([None, "t"]), max_tokens=st.integers(1, 12))
    def add(self, prefix, tail, salt, max_tokens):
        self.sched.add(req(f"r{self.next_id}", prefix + [7] * tail or [7], max_tokens, salt))
        self.next_id += 1

    @rule()
    def step(self):
        run_step(self.sched, self.sched.schedule())

    @precondition(lambda self: self.sched.requests)
    @rule(data=st.data())
    def cancel(self, data):
        rid = data.draw(st.sampled_from(sorted(self.sched.requests)))
        others = {b: self.kv.pool().holders(b) - {rid} for b in self.kv.block_table(rid)}
        self.sched.abort(rid)
        for b, rest in others.items():           # the blocks others hold stay theirs
            assert self.kv.pool().holders(b) == rest

    @precondition(lambda self: self.sched.running)
    @rule()
    def preempt(self):
        self.sched._preempt(self.sched._newest_running())

    @rule(n=st.integers(1, 10))
    def evict(self, n):
        """Something else takes n blocks (evicting cached ones) and gives them back."""
        got = self.kv.pool().allocate(min(n, self.kv.num_free()), "outsider")
        self.kv.pool().free(got, "outsider")

    @invariant()
    def books_are_exact(self):
        self.kv.check()
        pool = self.kv.pool()
        assert pool.num_empty + pool.num_used + pool.num_cached == pool.num_blocks
        for rid, r in self.sched.running.items():
            assert len(self.kv.block_table(rid)) * 16 >= r.num_computed_tokens


TestCacheMachine = CacheMachine.TestCase
TestCacheMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)


def test_openai_requests_carry_cache_salt_to_the_sampling_parameters():
    from hybridllm.serving.openai.protocol import parse_call
    call = parse_call({"prompt": "hi", "cache_salt": "tenant-7"}, "completion")
    assert call.sampling["cache_salt"] == "tenant-7"
    assert "cache_salt" not in parse_call({"prompt": "hi"}, "completion").sampling


def two_level(device_blocks=6, host_blocks=8):
    kv = BlockTables({Tier.DEVICE: BlockPool(device_blocks, 16), Tier.HOST: BlockPool(host_blocks, 32)})
    return NeoScheduler(kv, 8, 256, prefix_caching=True, model_id="m"), kv


A = list(range(500, 564))                       # 64 tokens: 4 device blocks, 2 host blocks


def chain_of(ids):
    return extend_chain([], root_hash("m", None), lambda s, e: ids[s:e], len(ids), 16)


def test_evicted_device_blocks_are_demoted_to_the_host_and_hit_there():
    sched, kv = two_level()
    sched.add(req("a", A, max_tokens=1))
    drain(sched)
    assert kv.num_cached(Tier.DEVICE) == 4 and kv.num_cached(Tier.HOST) == 0
    a_blocks = kv.pool(Tier.DEVICE).lookup(block_keys(chain_of(A), 16, 16))
    assert len(a_blocks) == 4
    sched.add(req("b", list(range(900, 990)), max_tokens=4))     # takes the whole device tier: evicts a's blocks
    out = sched.schedule()
    assert placement(out) == {"b": "device"} and kv.num_cached(Tier.DEVICE) == 0
    demoted = [c for c in out.copies if c.request_id == "(demotion)"]
    # Two host blocks, each from the two device blocks it is made of, in order; they run before anything else.
    assert [c.src_blocks for c in demoted] == [tuple(a_blocks[2:4]), tuple(a_blocks[0:2])]
    assert out.copies[:2] == tuple(demoted) and all(c.dst_tier is Tier.HOST for c in demoted)
    assert kv.num_cached(Tier.HOST) == 2 and sched.cache.demotions == 2
    run_step(sched, out)
    # a's prompt again while b holds the device: placed on the host, its cached blocks attended in place.
    out, s = first_chunk(sched, req("c", A + [1, 2, 3]))
    assert placement(out)["c"] == "host" and s.num_computed_tokens == 64
    assert sched.cache.host_placements == 1 and sched.cache.tier("host").hits == 64
    assert any("attends 64 host-cached tokens in place" in n for n in out.notes)
    kv.check()


def test_a_host_hit_is_promoted_to_the_device_when_it_fits_there():
    sched, kv = two_level()
    sched.add(req("a", A, max_tokens=1))
    drain(sched)
    sched.add(req("b", list(range(900, 990)), max_tokens=1))
    drain(sched)                                  # a's blocks demoted; b's cached on the device
    assert kv.num_cached(Tier.HOST) == 2
    host_blocks = kv.pool(Tier.HOST).lookup(block_keys(chain_of(A), 32, 16))
    out, s = first_chunk(sched, req("c", A + [7] * 8))
    assert placement(out)["c"] == "device" and s.num_computed_tokens == 64 and s.token_ids == (7,) * 8
    (promo,) = [c for c in out.copies if c.request_id == "c"]
    assert (promo.src_tier, promo.src_blocks, promo.dst_tier) == (Tier.HOST, tuple(host_blocks), Tier.DEVICE)
    assert promo.dst_blocks == tuple(kv.block_table("c")[:4]) and sched.cache.promotions == 2
    assert out.copies[-1] == promo                # after the demotions this step's evictions made
    assert any("promote 64 host-cached tokens" in n for n in out.notes)
    run_step(sched, out)
    drain(sched)
    _, s = first_chunk(sched, req("d", A + [8]))  # now a device hit
    assert s.num_computed_tokens == 64 and kv.tier_of("d") is Tier.DEVICE
    kv.check()


class TwoLevelMachine(CacheMachine):
    """The same under NEO over two tiers with promotions and demotions; each step's copies never write a
    block that a later copy of the step reads, nor read a block an earlier one wrote."""

    def __init__(self):
        RuleBasedStateMachine.__init__(self)
        self.sched, self.kv = two_level(device_blocks=7, host_blocks=6)
        self.sched.max_num_batched_tokens = 48
        self.next_id = 0

    @rule()
    def step(self):
        out = self.sched.schedule()
        written: set = set()
        for c in out.copies:
            assert not {(c.src_tier, b) for b in c.src_blocks} & written, c
            written |= {(c.dst_tier, b) for b in c.dst_blocks}
        run_step(self.sched, out)

    @rule(n=st.integers(1, 10))
    def evict(self, n):
        for tier in (Tier.DEVICE, Tier.HOST):
            got = self.kv.pool(tier).allocate(min(n, self.kv.num_free(tier)), "outsider")
            self.kv.pool(tier).free(got, "outsider")
            self.kv.pool(tier).evicted.clear()      # overwritten: nothing left to demote

    @invariant()
    def books_are_exact(self):
        self.kv.check()
        for tier in (Tier.DEVICE, Tier.HOST):
            pool = self.kv.pool(tier)
            assert pool.num_empty + pool.num_used + pool.num_cached == pool.num_blocks


TestTwoLevelMachine = TwoLevelMachine.TestCase
TestTwoLevelMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
