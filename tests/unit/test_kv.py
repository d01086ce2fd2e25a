"""Block pools and block tables: no leak, no double ownership, exact slot mapping."""
import pytest
import torch
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from hybridllm.kv import BlockPool, KVCacheManager, KVCacheTier, KVLayout, KVLeakError, Tier
from hybridllm.utils import ceil_div

LAYOUT = KVLayout(num_layers=2, num_kv_heads=3, head_dim=8, block_size=16, dtype=torch.float32)


# OpenVINO's PagedAttention on the CPU keeps 32-token host blocks; the device tier has 16.
HOST_LAYOUT = KVLayout(num_layers=2, num_kv_heads=3, head_dim=8, block_size=32, dtype=torch.float16)


def make_manager(num_blocks=8, host_blocks=4):
    tiers = {Tier.DEVICE: KVCacheTier(Tier.DEVICE, LAYOUT, num_blocks, "cpu"),
             Tier.HOST: KVCacheTier(Tier.HOST, LAYOUT, host_blocks, "cpu")}
    return KVCacheManager(tiers, 16)


def make_mixed_manager(num_blocks=8, host_blocks=4):
    return KVCacheManager({Tier.DEVICE: KVCacheTier(Tier.DEVICE, LAYOUT, num_blocks, "cpu"),
                           Tier.HOST: KVCacheTier(Tier.HOST, HOST_LAYOUT, host_blocks, "cpu")})


def write_tokens(kv, rid, n, seed):
    """Random K/V at positions [0, n) of rid, through its slot mapping; returns them [L, n, KVH, D]."""
    tier = kv.tiers[kv.tier_of(rid)]
    bs = kv.block_size_of(kv.tier_of(rid))
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(2, n, 3, 8, generator=g).to(tier.layout.dtype)
    v = torch.randn(2, n, 3, 8, generator=g).to(tier.layout.dtype)
    slots = torch.tensor(kv.slot_mapping(rid, 0, n))
    for layer in range(2):
        tier.key_cache[layer][slots // bs, :, slots % bs] = k[layer]
        tier.value_cache[layer][slots // bs, :, slots % bs] = v[layer]
    return k, v


def read_tokens(kv, rid, n):
    tier = kv.tiers[kv.tier_of(rid)]
    bs = kv.block_size_of(kv.tier_of(rid))
    slots = torch.tensor(kv.slot_mapping(rid, 0, n))
    return (torch.stack([tier.key_cache[i][slots // bs, :, slots % bs] for i in range(2)]),
            torch.stack([tier.value_cache[i][slots // bs, :, slots % bs] for i in range(2)]))


@pytest.mark.parametrize("n", [1, 15, 16, 17, 31, 32, 33, 47, 64])
def test_migrate_between_block_sizes_keeps_every_token(n):
    kv = make_mixed_manager()
    assert kv.allocate_slots("r", n, Tier.DEVICE)
    k, v = write_tokens(kv, "r", n, seed=n)
    src_tier, src, dst = kv.migrate("r", Tier.HOST, n + 1)
    assert src_tier == Tier.DEVICE and len(dst) == ceil_div(max(len(src) * 16, n + 1), 32)
    kv.copy_blocks(src_tier, src, Tier.HOST, dst)
    assert kv.block_size_of(kv.tier_of("r")) == 32 and kv.num_used(Tier.DEVICE) == 0
    hk, hv = read_tokens(kv, "r", n)
    torch.testing.assert_close(hk, k.to(torch.float16), rtol=0, atol=0)   # f32 -> f16 is the only change
    torch.testing.assert_close(hv, v.to(torch.float16), rtol=0, atol=0)
    # ... and back: host 32-token blocks -> device 16-token blocks.
    src_tier, src, dst = kv.migrate("r", Tier.DEVICE, n + 1)
    kv.copy_blocks(src_tier, src, Tier.DEVICE, dst)
    dk, dv = read_tokens(kv, "r", n)
    torch.testing.assert_close(dk, k.to(torch.float16).float(), rtol=0, atol=0)
    torch.testing.assert_close(dv, v.to(torch.float16).float(), rtol=0, atol=0)
    kv.check()
    assert kv.free("r") == len(dst) and kv.num_used(Tier.HOST) == 0


def test_copy_between_block_sizes_leaves_other_blocks_alone():
    kv = make_mixed_manager()
    assert kv.allocate_slots("other", 40, Tier.HOST)
    ok, ov = write_tokens(kv, "other", 40, seed=1)
    assert kv.allocate_slots("r", 20, Tier.DEVICE)
    write_tokens(kv, "r", 20, seed=2)
    src_tier, src, dst = kv.migrate("r", Tier.HOST, 21)
    kv.copy_blocks(src_tier, src, Tier.HOST, dst)
    k2, v2 = read_tokens(kv, "other", 40)
    assert torch.equal(k2, ok) and torch.equal(v2, ov)


def test_blocks_needed_and_slots_follow_the_tier_block_size():
    kv = make_mixed_manager()
    assert kv.blocks_needed("new", 40, Tier.HOST) == 2 and kv.blocks_needed("new", 40, Tier.DEVICE) == 3
    assert kv.allocate_slots("h", 40, Tier.HOST) and len(kv.block_table("h")) == 2
    t = kv.block_table("h")
    assert kv.slot_mapping("h", 31, 33) == [t[0] * 32 + 31, t[1] * 32]
    assert kv.capacity_tokens(Tier.HOST) == 4 * 32 and kv.capacity_tokens(Tier.DEVICE) == 8 * 16
    assert kv.block_size == 16


def test_manager_refuses_a_block_size_its_tiers_do_not_have():
    tiers = {Tier.HOST: KVCacheTier(Tier.HOST, HOST_LAYOUT, 2, "cpu")}
    with pytest.raises(ValueError, match="block_size: the host tier has 32-token blocks, not 16"):
        KVCacheManager(tiers, 16)


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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.uint8])
def test_layout_bytes_per_block_matches_tensor_storage(dtype):
    lay = KVLayout(num_layers=3, num_kv_heads=2, head_dim=8, block_size=32, dtype=dtype)
    tier = KVCacheTier(Tier.HOST, lay, 5, "cpu")
    real = sum(t.numel() * t.element_size() for t in tier.key_cache + tier.value_cache)
    assert tier.num_bytes == real == 5 * lay.bytes_per_block
    assert lay.num_blocks_for(real + lay.bytes_per_block - 1) == 5
    for cache, shape in ((tier.key_cache, lay.key_block_shape), (tier.value_cache, lay.value_block_shape)):
        assert len(cache) == 3 and cache[2].shape == (5, *shape) and cache[2].is_contiguous()
        assert cache[2].dtype == dtype and not cache[2].any()


def test_layout_u8_adds_the_ops_parameter_rows():
    # K: 8 rows of f32 scale / zero point per channel above the tokens; V: 8 bytes per token before the data.
    lay = KVLayout(num_layers=3, num_kv_heads=2, head_dim=8, block_size=32, dtype=torch.uint8)
    assert lay.quantized and lay.precision == "u8"
    assert lay.key_block_shape == (2, 40, 8) and lay.value_block_shape == (2, 32, 16)
    plain = KVLayout(num_layers=3, num_kv_heads=2, head_dim=8, block_size=32, dtype=torch.bfloat16)
    assert not plain.quantized and plain.precision == "bf16"
    assert plain.key_block_shape == plain.value_block_shape == (2, 32, 8)
    assert plain != KVLayout(3, 2, 8, 32, torch.float16) and plain == KVLayout(3, 2, 8, 32, torch.bfloat16)


def test_layout_and_tier_refuse_bad_values_by_name():
    with pytest.raises(ValueError, match="dtype: torch.int32 has no KV precision name"):
        KVLayout(1, 1, 8, 16, torch.int32)
    with pytest.raises(ValueError, match="KVLayout.block_size must be >= 1"):
        KVLayout(1, 1, 8, 0, torch.float32)
    with pytest.raises(ValueError, match="num_blocks must be >= 1, got 0"):
        KVCacheTier(Tier.DEVICE, LAYOUT, 0, "cpu")


def test_copy_blocks_refuses_a_quantized_tier():
    u8 = KVLayout(num_layers=2, num_kv_heads=3, head_dim=8, block_size=16, dtype=torch.uint8)
    kv = KVCacheManager({Tier.DEVICE: KVCacheTier(Tier.DEVICE, LAYOUT, 4, "cpu"),
                         Tier.HOST: KVCacheTier(Tier.HOST, u8, 4, "cpu")})
    assert kv.allocate_slots("r", 10, Tier.HOST)
    src_tier, src, dst = kv.migrate("r", Tier.DEVICE, 10)
    with pytest.raises(ValueError, match="the host tier is u8-quantised"):
        kv.copy_blocks(src_tier, src, Tier.DEVICE, dst)


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
            self.kv.copy_blocks(*moved[:2], to, moved[2])
            assert self.kv.tier_of(rid) == to and len(self.kv.block_table(rid)) * self.kv.block_size_of(to) \
                >= self.tokens[rid]

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
