"""Block pools and block tables (pure bookkeeping): no leak, no double ownership, reference counts
equal to holders, exact slot positions."""
import pytest
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from hybridllm.kv import BlockPool, BlockTables, KVLeakError, Tier
from hybridllm.utils import ceil_div


def make_manager(num_blocks=8, host_blocks=4):
    return BlockTables({Tier.DEVICE: BlockPool(num_blocks, 16, "device"), Tier.HOST: BlockPool(host_blocks, 16, "host")})


def make_mixed_manager(num_blocks=8, host_blocks=4):
    # OpenVINO's PagedAttention on the CPU keeps 32-token host blocks; the device tier has 16.
    return BlockTables({Tier.DEVICE: BlockPool(num_blocks, 16, "device"), Tier.HOST: BlockPool(host_blocks, 32, "host")})


def slots(kv, rid, start, end):
    """Slots of positions [start, end) of rid, as the executors' metadata computes them."""
    table, bs = kv.block_table(rid), kv.block_size_of(kv.tier_of(rid))
    return [table[p // bs] * bs + p % bs for p in range(start, end)]


def test_blocks_needed_and_slots_follow_the_tier_block_size():
    kv = make_mixed_manager()
    assert kv.blocks_needed("new", 40, Tier.HOST) == 2 and kv.blocks_needed("new", 40, Tier.DEVICE) == 3
    assert kv.allocate_slots("h", 40, Tier.HOST) and len(kv.block_table("h")) == 2
    t = kv.block_table("h")
    assert slots(kv, "h", 31, 33) == [t[0] * 32 + 31, t[1] * 32]
    assert kv.capacity_tokens(Tier.HOST) == 4 * 32 and kv.capacity_tokens(Tier.DEVICE) == 8 * 16
    assert kv.block_size == 16


def test_tables_and_pools_refuse_bad_arguments_by_name():
    with pytest.raises(TypeError, match="pools must map Tier -> BlockPool"):
        BlockTables({"device": BlockPool(2, 16)})
    with pytest.raises(ValueError, match="at least one tier"):
        BlockTables({})
    with pytest.raises(ValueError, match="BlockPool.block_size must be an integer >= 1"):
        BlockPool(2, 0)
    with pytest.raises(ValueError, match="BlockPool.num_blocks must be an integer >= 0"):
        BlockPool(-1, 16)


def test_pool_allocate_until_full_returns_none_and_takes_nothing():
    pool = BlockPool(5, 16)
    a = pool.allocate(3, "a")
    assert len(a) == 3 and pool.num_free == 2
    assert pool.allocate(3, "b") is None
    assert pool.num_free == 2 and pool.num_used == 3
    b = pool.allocate(2, "b")
    assert not set(a) & set(b)
    assert pool.allocate(1, "c") is None
    pool.check()


def test_pool_double_free_and_wrong_owner_raise():
    pool = BlockPool(4, 16)
    blocks = pool.allocate(2, "a")
    with pytest.raises(KVLeakError, match="block 0 is held by 'a', not 'b'"):
        pool.free(blocks, "b")
    pool.free(blocks, "a")
    with pytest.raises(KVLeakError, match="freed twice"):
        pool.free(blocks[:1], "a")
    assert pool.num_free == 4
    pool.check()


def test_manager_grows_tables_and_maps_slots():
    kv = make_manager()
    assert kv.allocate_slots("r", 17)                 # 2 blocks
    table = kv.block_table("r")
    assert len(table) == 2
    assert kv.allocate_slots("r", 32) and len(kv.block_table("r")) == 2
    assert kv.allocate_slots("r", 33) and len(kv.block_table("r")) == 3
    table = kv.block_table("r")
    assert slots(kv, "r", 14, 18) == [table[0] * 16 + 14, table[0] * 16 + 15, table[1] * 16, table[1] * 16 + 1]
    assert kv.free("r") == 3 and kv.num_used() == 0
    kv.check()


def test_manager_failed_allocation_leaves_request_unchanged():
    kv = make_manager(num_blocks=3)
    assert kv.allocate_slots("a", 32)
    assert not kv.allocate_slots("b", 33)             # needs 3, only 1 free
    assert kv.block_table("b") == [] and kv.num_free() == 1
    assert not kv.allocate_slots("a", 64)             # needs 2 more
    assert len(kv.block_table("a")) == 2
    kv.check()


def test_manager_refuses_mixing_tiers():
    kv = make_manager()
    assert kv.allocate_slots("a", 10, Tier.HOST)
    with pytest.raises(KVLeakError, match="lives on host"):
        kv.allocate_slots("a", 20, Tier.DEVICE)
    assert kv.num_used(Tier.HOST) == 1 and kv.num_used(Tier.DEVICE) == 0


class KVMachine(RuleBasedStateMachine):
    """Random add / grow / finish / abort; the pools must stay exact."""

    def __init__(self):
        super().__init__()
        self.kv = make_mixed_manager(num_blocks=12, host_blocks=6)
        self.tokens: dict[str, int] = {}
        self.next_id = 0

    @rule(n=st.integers(1, 80), host=st.booleans())
    def add(self, n, host):
        rid = f"r{self.next_id}"
        self.next_id += 1
        tier = Tier.HOST if host else Tier.DEVICE
        free_before = self.kv.num_free(tier)
        if self.kv.allocate_slots(rid, n, tier):
            self.tokens[rid] = n
            assert self.kv.num_free(tier) == free_before - ceil_div(n, self.kv.block_size_of(tier))
        else:
            assert self.kv.num_free(tier) == free_before and not self.kv.has(rid)

    @precondition(lambda self: self.tokens)
    @rule(data=st.data(), extra=st.integers(1, 40))
    def grow(self, data, extra):
        rid = data.draw(st.sampled_from(sorted(self.tokens)))
        if self.kv.allocate_slots(rid, self.tokens[rid] + extra, self.kv.tier_of(rid)):
            self.tokens[rid] += extra

    @precondition(lambda self: self.tokens)
    @rule(data=st.data())
    def finish_or_abort(self, data):
        rid = data.draw(st.sampled_from(sorted(self.tokens)))
        bs = self.kv.block_size_of(self.kv.tier_of(rid))
        held = len(self.kv.block_table(rid))
        n = self.kv.free(rid)
        assert n == held and held >= ceil_div(self.tokens.pop(rid), bs)
        assert self.kv.free(rid) == 0                 # a second free of the same request is a no-op

    @precondition(lambda self: self.tokens)
    @rule(data=st.data())
    def migrate(self, data):
        rid = data.draw(st.sampled_from(sorted(self.tokens)))
        src_tier = self.kv.tier_of(rid)
        to = Tier.HOST if src_tier == Tier.DEVICE else Tier.DEVICE
        free_before = self.kv.num_free(to)
        moved = self.kv.migrate(rid, to, self.tokens[rid])
        if moved is None:
            assert self.kv.tier_of(rid) == src_tier and self.kv.num_free(to) == free_before
        else:
            assert self.kv.tier_of(rid) == to and len(self.kv.block_table(rid)) * self.kv.block_size_of(to) \
                >= self.tokens[rid]

    @precondition(lambda self: self.tokens)
    @rule(data=st.data())
    def share(self, data):
        """A new request takes another's first blocks as its own prefix (what the prefix cache does)."""
        src = data.draw(st.sampled_from(sorted(self.tokens)))
        tier = self.kv.tier_of(src)
        table = self.kv.block_table(src)
        k = data.draw(st.integers(1, len(table)))
        rid = f"r{self.next_id}"
        self.next_id += 1
        before = [self.kv.pool(tier).refcount(b) for b in table[:k]]
        self.kv.share(rid, table[:k], tier)
        assert [self.kv.pool(tier).refcount(b) for b in table[:k]] == [n + 1 for n in before]
        self.tokens[rid] = k * self.kv.block_size_of(tier)

    @invariant()
    def pools_are_exact(self):
        self.kv.check()
        for tier in (Tier.DEVICE, Tier.HOST):
            pool = self.kv.pool(tier)
            assert pool.num_free + pool.num_used == pool.num_blocks
        for rid, n in self.tokens.items():
            # exact, except that a migration keeps room for every slot the source held
            assert len(self.kv.block_table(rid)) >= ceil_div(n, self.kv.block_size_of(self.kv.tier_of(rid)))


TestKVMachine = KVMachine.TestCase
TestKVMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)


def test_shared_blocks_free_only_with_their_last_holder():
    kv = make_manager()
    assert kv.allocate_slots("a", 40)                 # 3 blocks
    table = list(kv.block_table("a"))
    kv.share("b", table[:2])                          # b starts with a's first two blocks
    assert kv.block_table("b") == table[:2] and kv.num_used() == 3
    assert [kv.pool().refcount(x) for x in table] == [2, 2, 1]
    kv.check()
    assert kv.allocate_slots("b", 40) and len(kv.block_table("b")) == 3 and kv.num_used() == 4
    assert kv.free("a") == 3 and kv.num_used() == 3   # a's own third block is free; the shared two stay
    assert [kv.pool().refcount(x) for x in table[:2]] == [1, 1]
    kv.check()
    assert kv.free("b") == 3 and kv.num_used() == 0
    kv.check()


def test_share_refuses_free_blocks_a_second_hold_and_a_request_with_a_table():
    kv = make_manager()
    assert kv.allocate_slots("a", 16)
    (blk,) = kv.block_table("a")
    free_block = next(b for b in range(8) if b != blk)
    with pytest.raises(KVLeakError, match="is free; only a used block can be shared"):
        kv.share("b", [free_block])
    with pytest.raises(KVLeakError, match="already holds block"):
        kv.pool().share([blk], "a")
    with pytest.raises(KVLeakError, match="already has a block table"):
        kv.share("a", [blk])
    assert kv.pool().refcount(blk) == 1 and not kv.has("b")
    kv.check()


def test_check_catches_a_table_the_pool_does_not_know():
    kv = make_manager()
    assert kv.allocate_slots("a", 16)
    kv._tables["ghost"] = list(kv.block_table("a"))   # a table that took a block without the pool
    kv._tier_of["ghost"] = Tier.DEVICE
    with pytest.raises(KVLeakError, match="holders differ"):
        kv.check()


def test_bookkeeping_imports_no_torch():
    """kv/ is pure: the scheduler uses it without torch (a subprocess, so nothing else loaded torch)."""
    import subprocess
    import sys
    code = ("import sys, hybridllm.kv, hybridllm.scheduler, hybridllm.policy; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', 'openvino')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
