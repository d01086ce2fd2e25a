"""Shared by the host attention tests: backends per path and precision, a float64 reference, a
driver that runs steps through a backend over a scratch tier, and tolerances."""
import torch

from hybridllm.attention import build_metadata
from hybridllm.attention.host import HostAttention, HostAttentionSpec, select_backend
from hybridllm.kv import Tier
from hybridllm.attention.kv_cache import KVCacheTier
from hybridllm.ov_common import core
from hybridllm.utils import ceil_div

# OpenVINO's CPU PagedAttention takes bf16 KV only where the CPU has bf16 arithmetic (AVX512_BF16 or AMX);
# elsewhere a forced ov_paged with bf16 KV refuses at compile time (test_host_attention_paths checks that).
OV_BF16 = "BF16" in core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
_OP = ("f32", "f16") + (("bf16",) if OV_BF16 else ()) + ("u8",)
# native: our decode kernel; its prefills run in the op, so it has the op's formats.
PRECISIONS = {"native": _OP, "ov_paged": _OP, "ov_sdpa": ("f32", "f16", "bf16"), "torch": ("f32", "f16", "bf16")}
# Max abs error on unit-variance q/k/v; the output is a convex mix of V rows. f32 is limited by the
# kernels' summation order, the others by rounding (bf16 also runs q in bf16, u8 quantises K/V to 8 bits).
TOL = {"f32": 1e-5, "f16": 5e-3, "bf16": 4e-2, "u8": 6e-2}
HEADS = [(9, 3, 64), (32, 8, 128)]
HEAD_IDS = {(9, 3, 64): "h9-3-d64", (32, 8, 128): "h32-8-d128"}

_backends = {}


def backend(path, precision, heads=(9, 3, 64), window=None, isa="auto"):
    key = (path, precision, heads, window, isa)
    if key not in _backends:
        h, kvh, d = heads
        spec = HostAttentionSpec(num_layers=2, num_heads=h, num_kv_heads=kvh, head_dim=d,
                                 kv_precision=precision, sliding_window=window, path=path, isa=isa)
        _backends[key] = select_backend(spec)[0]
    return _backends[key]


def reference(q, keys, vals, qlens, window=None):
    """Float64, explicit softmax, one sequence and 256 queries at a time: q [T, H, D] -> [T, H * D]."""
    outs, start = [], 0
    for kk, vv, n in zip(keys, vals, qlens):
        g = q.shape[1] // kk.shape[1]
        k64 = kk.double().repeat_interleave(g, 1).permute(1, 2, 0)          # [H, D, S]
        v64 = vv.double().repeat_interleave(g, 1).transpose(0, 1)           # [H, S, D]
        s_len = kk.shape[0]
        for a in range(0, n, 256):
            b = min(n, a + 256)
            qq = q[start + a:start + b].double().transpose(0, 1)            # [H, b - a, D]
            scores = qq @ k64 / q.shape[2] ** 0.5                           # [H, b - a, S]
            qp = torch.arange(s_len - n + a, s_len - n + b)[:, None]
            kp = torch.arange(s_len)[None, :]
            visible = (kp <= qp) & ((qp - kp < window) if window else True)
            scores = scores.masked_fill(~visible, float("-inf"))
            outs.append((scores.softmax(-1) @ v64).transpose(0, 1).reshape(b - a, -1))
        start += n
    return torch.cat(outs).float()


class Run:
    """Sequences on a fresh tier of `be`'s layout, with random non-contiguous block tables."""

    def __init__(self, be, total_lens, seed=0, spare=3):
        self.be, self.bs = be, be.layout.block_size
        self.gen = torch.Generator().manual_seed(seed)
        need = [ceil_div(n, self.bs) for n in total_lens]
        self.ha = HostAttention(be, KVCacheTier(Tier.HOST, be.layout, sum(need) + spare, "cpu"))
        perm = torch.randperm(sum(need) + spare, generator=self.gen).tolist()
        self.tables, o = [], 0
        for n in need:
            self.tables.append(perm[o:o + n])
            o += n
        s = be.spec
        self.keys = [self.rand(n, s.num_kv_heads, s.head_dim) for n in total_lens]
        self.vals = [self.rand(n, s.num_kv_heads, s.head_dim) for n in total_lens]
        self.done = [0] * len(total_lens)

    def rand(self, *shape):
        return torch.randn(*shape, generator=self.gen)

    def step(self, work, layer=0):
        """work: [(seq, num_new_tokens)] -> (out, ref) for this step."""
        s = self.be.spec
        qlens = [n for _, n in work]
        slens = [self.done[i] + n for i, n in work]
        md = build_metadata(qlens, slens, [self.tables[i] for i, _ in work], self.bs, torch.device("cpu"),
                            s.sliding_window)
        q = self.rand(sum(qlens), s.num_heads, s.head_dim)
        k = torch.cat([self.keys[i][self.done[i]:e] for (i, _), e in zip(work, slens)])
        v = torch.cat([self.vals[i][self.done[i]:e] for (i, _), e in zip(work, slens)])
        out = self.ha.forward(layer, q, k, v, md)
        for (i, _), e in zip(work, slens):
            self.done[i] = e
        ref = reference(q, [self.keys[i][:e] for (i, _), e in zip(work, slens)],
                        [self.vals[i][:e] for (i, _), e in zip(work, slens)], qlens, s.sliding_window)
        return out, ref


def read_back(tier, layer, table, n):
    """Positions [0, n) of a sequence as float32 K, V [n, KVH, D], read straight from the tier's tensors
    in the layout attention/kv_cache.py documents (u8: dequantized with its per-block parameters)."""
    idx = torch.tensor(table, dtype=torch.int64)
    kb, vb = tier.key_cache[layer][idx], tier.value_cache[layer][idx]   # [nb, KVH, *, *]
    if tier.layout.quantized:
        f32 = torch.float32
        k_scale = kb[:, :, 0:4].contiguous().flatten(-2).view(f32)[:, :, None]   # [nb, KVH, 1, D]
        k_zp = kb[:, :, 4:8].contiguous().flatten(-2).view(f32)[:, :, None]
        kb = (kb[:, :, 8:].float() - k_zp) * k_scale                            # [nb, KVH, bs, D]
        v_par = vb[..., :8].contiguous().view(f32)                              # [nb, KVH, bs, 2]
        vb = (vb[..., 8:].float() - v_par[..., 1:2]) * v_par[..., 0:1]
    d = tier.layout.head_dim
    k = kb.float().transpose(1, 2).reshape(-1, tier.layout.num_kv_heads, d)   # [nb * bs, KVH, D]
    v = vb.float().transpose(1, 2).reshape(-1, tier.layout.num_kv_heads, d)
    return k[:n], v[:n]


def check(out, ref, precision):
    assert out.shape == ref.shape and out.dtype == torch.float32
    err = (out - ref).abs().max().item()
    assert err <= TOL[precision], f"max error {err:.3g} > {TOL[precision]} ({precision})"


def boundary_lens(bs):
    return [1, bs - 1, bs, bs + 1, 2 * bs, 2 * bs + 1, 3 * bs - 1]


