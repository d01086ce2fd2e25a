"""The KV tensors: layouts, tiers, and the copies between tiers (runtime/kv_copy.py), sync and async."""
import pytest
import torch

from hybridllm.attention.kv_cache import KVCacheTier, KVLayout
from hybridllm.kv import BlockTables, Tier
from hybridllm.runtime.kv_copy import KVCopier, copy_blocks
from hybridllm.scheduler import BlockCopy
from hybridllm.utils import ceil_div

LAYOUT = KVLayout(num_layers=2, num_kv_heads=3, head_dim=8, block_size=16, dtype=torch.float32)
# OpenVINO's PagedAttention on the CPU keeps 32-token host blocks; the device tier has 16.
HOST_LAYOUT = KVLayout(num_layers=2, num_kv_heads=3, head_dim=8, block_size=32, dtype=torch.float16)


class Store:
    """Tensors and bookkeeping together, as the runtime and the scheduler hold them."""

    def __init__(self, num_blocks=8, host_blocks=4, host_layout=HOST_LAYOUT):
        self.tiers = {Tier.DEVICE: KVCacheTier(Tier.DEVICE, LAYOUT, num_blocks, "cpu"),
                      Tier.HOST: KVCacheTier(Tier.HOST, host_layout, host_blocks, "cpu")}
        self.kv = BlockTables({t: c.new_pool() for t, c in self.tiers.items()})

    def slots(self, rid, n):
        table, bs = self.kv.block_table(rid), self.kv.block_size_of(self.kv.tier_of(rid))
        return torch.tensor([table[p // bs] * bs + p % bs for p in range(n)])

    def write(self, rid, n, seed):
        """Random K/V at positions [0, n) of rid; returns them [L, n, KVH, D]."""
        tier = self.tiers[self.kv.tier_of(rid)]
        bs = tier.block_size
        g = torch.Generator().manual_seed(seed)
        k = torch.randn(2, n, 3, 8, generator=g).to(tier.layout.dtype)
        v = torch.randn(2, n, 3, 8, generator=g).to(tier.layout.dtype)
        s = self.slots(rid, n)
        for layer in range(2):
            tier.key_cache[layer][s // bs, :, s % bs] = k[layer]
            tier.value_cache[layer][s // bs, :, s % bs] = v[layer]
        return k, v

    def read(self, rid, n):
        tier = self.tiers[self.kv.tier_of(rid)]
        bs = tier.block_size
        s = self.slots(rid, n)
        return (torch.stack([tier.key_cache[i][s // bs, :, s % bs] for i in range(2)]),
                torch.stack([tier.value_cache[i][s // bs, :, s % bs] for i in range(2)]))

    def move(self, rid, to, n, copier=None):
        src_tier, src, dst = self.kv.migrate(rid, to, n)
        if copier is None:
            copy_blocks(self.tiers[src_tier], src, self.tiers[to], dst)
        else:
            copier.submit([BlockCopy(rid, src_tier, tuple(src), to, tuple(dst))])
        return src_tier, src, dst


@pytest.mark.parametrize("n", [1, 15, 16, 17, 31, 32, 33, 47, 64])
def test_migrate_between_block_sizes_keeps_every_token(n):
    st = Store()
    assert st.kv.allocate_slots("r", n, Tier.DEVICE)
    k, v = st.write("r", n, seed=n)
    src_tier, src, dst = st.move("r", Tier.HOST, n + 1)
    assert src_tier == Tier.DEVICE and len(dst) == ceil_div(max(len(src) * 16, n + 1), 32)
    assert st.kv.block_size_of(st.kv.tier_of("r")) == 32 and st.kv.num_used(Tier.DEVICE) == 0
    hk, hv = st.read("r", n)
    torch.testing.assert_close(hk, k.to(torch.float16), rtol=0, atol=0)   # f32 -> f16 is the only change
    torch.testing.assert_close(hv, v.to(torch.float16), rtol=0, atol=0)
    # ... and back: host 32-token blocks -> device 16-token blocks, through the async copier this time.
    copier = KVCopier(st.tiers, torch.device("cpu"))
    src_tier, src, dst = st.move("r", Tier.DEVICE, n + 1, copier)
    copier.wait()
    dk, dv = st.read("r", n)
    torch.testing.assert_close(dk, k.to(torch.float16).float(), rtol=0, atol=0)
    torch.testing.assert_close(dv, v.to(torch.float16).float(), rtol=0, atol=0)
    st.kv.check()
    assert st.kv.free("r") == len(dst) and st.kv.num_used(Tier.HOST) == 0 and copier.num_copies == 1
    copier.close()


def test_copy_between_block_sizes_leaves_other_blocks_alone():
    st = Store()
    assert st.kv.allocate_slots("other", 40, Tier.HOST)
    ok, ov = st.write("other", 40, seed=1)
    assert st.kv.allocate_slots("r", 20, Tier.DEVICE)
    st.write("r", 20, seed=2)
    st.move("r", Tier.HOST, 21)
    k2, v2 = st.read("other", 40)
    assert torch.equal(k2, ok) and torch.equal(v2, ov)


def test_copier_runs_off_the_calling_thread_and_reraises_in_wait(monkeypatch):
    import threading
    from hybridllm.runtime import kv_copy
    st = Store(host_layout=LAYOUT)
    assert st.kv.allocate_slots("r", 20, Tier.DEVICE)
    st.write("r", 20, seed=3)
    seen = []
    real = kv_copy.copy_blocks
    gate = threading.Event()

    def slow(*a):
        seen.append(threading.current_thread().name)
        gate.wait(5)
        real(*a)
    monkeypatch.setattr(kv_copy, "copy_blocks", slow)
    copier = KVCopier(st.tiers, torch.device("cpu"))
    st.move("r", Tier.HOST, 21, copier)
    assert copier._pending is not None and not copier._pending.done()    # submit returned before the copy ran
    gate.set()
    copier.wait()
    assert seen and seen[0].startswith("hybridllm-kv-copy")

    def broken(*a):
        raise RuntimeError("copy failed")
    monkeypatch.setattr(kv_copy, "copy_blocks", broken)
    st.move("r", Tier.DEVICE, 21, copier)
    with pytest.raises(RuntimeError, match="copy failed"):
        copier.wait()
    copier.wait()                                     # reported once; the copier stays usable
    copier.close()


@pytest.mark.parametrize("n", [1, 15, 33, 64])
def test_copy_into_a_u8_tier_quantizes_on_the_way_and_back(n):
    """Device f32 (16-token blocks) -> host u8 (32-token blocks, the op's layout) -> device: every token
    within the 8-bit step of its block's range (keys per channel, values per token), others untouched."""
    u8 = KVLayout(num_layers=2, num_kv_heads=3, head_dim=16, block_size=32, dtype=torch.uint8)
    dev = KVLayout(num_layers=2, num_kv_heads=3, head_dim=16, block_size=16, dtype=torch.float32)
    tiers = {Tier.DEVICE: KVCacheTier(Tier.DEVICE, dev, 8, "cpu"), Tier.HOST: KVCacheTier(Tier.HOST, u8, 4, "cpu")}
    g = torch.Generator().manual_seed(n)
    k, v = torch.randn(2, n, 3, 16, generator=g), torch.randn(2, n, 3, 16, generator=g)
    src = [5, 2, 7, 0][:ceil_div(n, 16)]
    pos = torch.arange(n)
    slots = torch.tensor(src)[pos // 16] * 16 + pos % 16
    for layer in range(2):
        tiers[Tier.DEVICE].write_tokens(layer, slots, k[layer], v[layer])
    dst = [3, 1][:ceil_div(n, 32)]
    copy_blocks(tiers[Tier.DEVICE], src, tiers[Tier.HOST], dst)
    # 8 bits over a range of a few units: half a step is under 0.02; requantizing when a block's range
    # widens can add a few half-steps more.
    for layer in range(2):
        hk, hv = tiers[Tier.HOST].read_tokens(layer, torch.tensor(dst), n)
        assert (hk - k[layer]).abs().max() < 0.06 and (hv - v[layer]).abs().max() < 0.02
    assert not tiers[Tier.HOST].key_cache[0][[0, 2]].any()             # blocks not in dst: untouched
    back = [6, 4, 1, 3][:ceil_div(n, 16)]
    copy_blocks(tiers[Tier.HOST], dst, tiers[Tier.DEVICE], back)
    hk, hv = tiers[Tier.HOST].read_tokens(1, torch.tensor(dst), n)
    dk, dv = tiers[Tier.DEVICE].read_tokens(1, torch.tensor(back), n)
    torch.testing.assert_close(dk, hk, rtol=0, atol=0)                 # u8 -> f32 is exact dequantization
    torch.testing.assert_close(dv, hv, rtol=0, atol=0)


def test_tier_pool_has_the_tiers_blocks_without_the_pad_block():
    tier = KVCacheTier(Tier.DEVICE, LAYOUT, 6, "cpu", pad_block=True)
    pool = tier.new_pool()
    assert pool.num_blocks == 6 and pool.block_size == 16 and tier.pad_block == 6
    assert tier.key_cache[0].shape[0] == 7


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
