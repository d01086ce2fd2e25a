"""Block pools and block tables: no leak, no double ownership, exact slot mapping."""
import pytest
import torch
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from hybridllm.kv import BlockPool, KVCacheManager, KVCacheTier, KVLayout, KVLeakError, Tier

LAYOUT = KVLayout(num_layers=2, num_kv_heads=3, head_dim=8, block_size=16, dtype=torch.float32)


def make_manager(num_blocks=8, host_blocks=4):
    tiers = {Tier.DEVICE: KVCacheTier(Tier.DEVICE, LAYOUT, num_blocks, "cpu"),
             Tier.HOST: KVCacheTier(Tier.HOST, LAYOUT, host_blocks, "cpu")}
    return KVCacheManager(tiers, 16)


def test_pool_allocate_until_full_returns_none_and_takes_nothing():
    pool = BlockPool(5)
    a = pool.allocate(3, "a")
    assert len(a) == 3 and pool.num_free == 2
    assert pool.allocate(3, "b") is None
    assert pool.num_free == 2 and pool.num_used == 3
    b = pool.allocate(2, "b")
    assert not set(a) & set(b)
    assert pool.allocate(1, "c") is None
    pool.check()


def test_pool_double_free_and_wrong_owner_raise():
    pool = BlockPool(4)
    blocks = pool.allocate(2, "a")
    with pytest.raises(KVLeakError, match="owned by 'a'"):
        pool.free(blocks, "b")
    pool.free(blocks, "a")
    with pytest.raises(KVLeakError, match="freed twice"):
        pool.free(blocks[:1], "a")
    assert pool.num_free == 4
    pool.check()


def test_layout_bytes_per_block_matches_tensor_storage():
    tier = KVCacheTier(Tier.DEVICE, LAYOUT, 3, "cpu")
    real = sum(t.numel() * t.element_size() for t in tier.key_cache + tier.value_cache)
    assert tier.num_bytes == real
    assert tier.key_cache[1].shape == (3, 3, 16, 8) and tier.key_cache[1].is_contiguous()


def test_manager_grows_tables_and_maps_slots():
    kv = make_manager()
    assert kv.allocate_slots("r", 17)                 # 2 blocks
    table = kv.block_table("r")
    assert len(table) == 2
    assert kv.allocate_slots("r", 32) and len(kv.block_table("r")) == 2
    assert kv.allocate_slots("r", 33) and len(kv.block_table("r")) == 3
    table = kv.block_table("r")
    slots = kv.slot_mapping("r", 14, 18)
    assert slots == [table[0] * 16 + 14, table[0] * 16 + 15, table[1] * 16, table[1] * 16 + 1]
    with pytest.raises(KVLeakError):
        kv.slot_mapping("r", 40, 49)                  # position 48 has no block
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
        self.kv = make_manager(num_blocks=12, host_blocks=6)
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
            assert self.kv.num_free(tier) == free_before - -(-n // 16)
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
        n = self.kv.free(rid)
        assert n == -(-self.tokens.pop(rid) // 16)
        assert self.kv.free(rid) == 0                 # a second free of the same request is a no-op

    @invariant()
    def pools_are_exact(self):
        self.kv.check()
        for tier in (Tier.DEVICE, Tier.HOST):
            pool = self.kv.pool(tier)
            assert pool.num_free + pool.num_used == pool.num_blocks
        for rid, n in self.tokens.items():
            assert len(self.kv.block_table(rid)) == -(-n // 16)


TestKVMachine = KVMachine.TestCase
TestKVMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
