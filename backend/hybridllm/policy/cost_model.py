"""CostModel: predicted time and memory of each policy, per step and per phase of a workload.

Pure functions of (ModelShape, StepShape or BatchShape, HardwareProfile); no clocks, no I/O.
One set of formulas: every policy's per-step method (named by its registry entry) composes the
same building blocks (linear layers, attention, Q/K/V hand-offs, weight streaming), and NEO's
cost tables (neo.py) are built from them too. A phase estimate is steps x one step: prefill is
one step over the whole batch; decode is output_len - 1 steps at the mean decode context.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..dtypes import BYTES
from .profile import HardwareProfile
from .registry import POLICIES, on_host
from .shapes import BatchShape, ModelShape

PHASES = ("prefill", "decode")


@dataclass(frozen=True)
class StepShape:
    """One step's work: prefill chunks and decodes, with the KV they read."""
    prefill_tokens: int = 0         # new tokens of the step's prefill chunks
    prefill_seqs: int = 0
    prefill_context: float = 0.0    # token-weighted mean context at the end of each chunk
    decode_seqs: int = 0
    decode_context: float = 0.0     # total context of the decodes: tokens of KV they read
    kv_dtype: str = "f32"

    @property
    def tokens(self) -> int:
        return self.prefill_tokens + self.decode_seqs

    @property
    def seqs(self) -> int:
        return self.prefill_seqs + self.decode_seqs


@dataclass(frozen=True)
class StepCost:
    seconds: float               # wall time of the step
    compute_s: float             # device + host compute, as if run back to back
    transfer_s: float = 0.0      # PCIe (or memcpy) traffic
    overlap_s: float = 0.0       # how much of compute + transfer runs concurrently


@dataclass(frozen=True)
class Estimate:
    policy: str
    phase: str
    seconds: float               # wall time of the phase
    compute_s: float
    transfer_s: float
    overlap_s: float
    device_bytes: int            # device memory the policy needs
    host_bytes: int              # host memory the policy needs
    feasible: bool
    why_not: str = ""            # set when not feasible


def phase_step(phase: str, b: BatchShape) -> tuple[StepShape, int]:
    """The representative step of a phase and how many such steps it takes."""
    if phase == "prefill":
        return StepShape(b.batch * b.input_len, b.batch, float(b.input_len), kv_dtype=b.kv_dtype), 1
    return (StepShape(decode_seqs=b.batch, decode_context=b.batch * b.mean_decode_context, kv_dtype=b.kv_dtype),
            max(b.output_len - 1, 0))


class CostModel:
    def __init__(self, profile: HardwareProfile, device_memory_bytes: int | None = None, host_kv_dtype: str | None = None):
        """host_kv_dtype: the host tier's own format, which host attention is priced in (its table and its
        bytes); None: the step's kv_dtype, as the device tier's."""
        self.hw = profile
        self.host_kv_dtype = host_kv_dtype
        self.device_memory = min(profile.device_memory_bytes, device_memory_bytes or profile.device_memory_bytes)

    # -- building blocks (per step) ------------------------------------------------

    def linear(self, where: str, m: ModelShape, tokens: int, seqs: int) -> float:
        """Every layer's GEMMs over `tokens` rows, plus the LM head on the `seqs` sampled rows."""
        if tokens == 0:
            return 0.0
        table = self.hw.device_gemm if where == "device" else self.hw.host_gemm
        return m.num_layers * sum(table(tokens, n * k) for n, k in m.gemms) + table(max(seqs, 1), m.vocab * m.hidden)

    def attention(self, where: str, m: ModelShape, s: StepShape) -> float:
        hw, t = self.hw, 0.0
        kv = s.kv_dtype if where == "device" or self.host_kv_dtype is None else self.host_kv_dtype
        if s.decode_seqs:
            table = hw.device_attention_decode if where == "device" else hw.host_attention("decode", kv)
            t += table(s.decode_seqs, s.decode_context * 2 * m.num_kv_heads * m.head_dim * BYTES[kv])
        if s.prefill_tokens:
            # Causal: a new token sees (context + 1) / 2 keys on average; QK^T and PV are 2 FLOPs per MAC each.
            table = hw.device_attention_prefill if where == "device" else hw.host_attention("prefill", kv)
            t += table(s.prefill_tokens, 4 * (s.prefill_context + 1) / 2 * m.num_heads * m.head_dim)
        return m.num_layers * t

    def handoff(self, m: ModelShape, tokens: int) -> float:
        """Q/K/V of `tokens` new tokens down to the host and the attention output back up, every layer."""
        q_kv = tokens * (m.num_heads + 2 * m.num_kv_heads) * m.head_dim * m.act_bytes
        out = tokens * m.num_heads * m.head_dim * m.act_bytes
        return m.num_layers * (q_kv / self.hw.d2h_pinned + out / self.hw.h2d_pinned)

    def fixed(self, m: ModelShape) -> float:
        return self.hw.launch_overhead_s + m.num_layers * self.hw.layer_overhead_s

    def activation_bytes(self, m: ModelShape, s: StepShape) -> int:
        per_token = 4 * m.hidden + 2 * m.intermediate + (m.num_heads + 2 * m.num_kv_heads) * m.head_dim
        return int(s.tokens * per_token * m.act_bytes + s.seqs * m.vocab * 4)

    # -- policies: one step each (the registry names these methods) -------------------

    def gpu_only(self, m: ModelShape, s: StepShape) -> StepCost:
        c = self.linear("device", m, s.tokens, s.seqs) + self.attention("device", m, s) + self.fixed(m)
        return StepCost(c, c)

    def cpu_only(self, m: ModelShape, s: StepShape) -> StepCost:
        c = self.linear("host", m, s.tokens, s.seqs) + self.attention("host", m, s) + self.fixed(m)
        return StepCost(c, c)

    def gpu_offload(self, m: ModelShape, s: StepShape, kv_streamed: bool = False) -> StepCost:
        """FlexGen: weights stream layer by layer, the next layer's copy overlapping this layer's compute.
        kv_streamed: the KV does not fit beside two layers of weights and streams too."""
        hw = self.hw
        per_layer_xfer = m.layer_weight_bytes / hw.h2d_pinned
        if kv_streamed:
            kv_tokens = s.decode_context + s.prefill_seqs * s.prefill_context
            per_layer_xfer += kv_tokens * 2 * m.num_kv_heads * m.head_dim * _kv_bytes(s) / hw.h2d_pinned
        head = hw.device_gemm(max(s.seqs, 1), m.vocab * m.hidden) if s.tokens else 0.0
        per_layer = (self.linear("device", m, s.tokens, s.seqs) - head + self.attention("device", m, s)) / m.num_layers
        compute = per_layer * m.num_layers + head + self.fixed(m)
        transfer = per_layer_xfer * m.num_layers
        if hw.device_is_host:           # a memcpy on the same cores: nothing overlaps
            return StepCost(compute + transfer, compute, transfer)
        overlap = (m.num_layers - 1) * min(per_layer_xfer, per_layer)
        return StepCost(compute + transfer - overlap, compute, transfer, overlap)

    def partition(self, m: ModelShape, s: StepShape, pipelined: bool = False) -> StepCost:
        """Linear layers on the device, attention on the host over the host KV tier."""
        dev = self.linear("device", m, s.tokens, s.seqs) + self.fixed(m)
        host = self.attention("host", m, s)
        transfer = self.handoff(m, s.tokens)
        overlap = 0.0
        if pipelined and not self.hw.device_is_host:
            # Two sub-batches: the device's linear work for one hides the host's attention for the other.
            overlap = min(dev, host + transfer) * (1 - 1 / (2 * m.num_layers))
        return StepCost(dev + host + transfer - overlap, dev + host, transfer, overlap)

    def neo(self, m: ModelShape, s: StepShape) -> StepCost:
        """NEO with every decode on the host: partition, pipelined over two sub-batches (its
        load-aware per-step choice is NeoCostTables, from these same blocks)."""
        return self.partition(m, s, pipelined=True)

    def step(self, policy: str, m: ModelShape, s: StepShape) -> StepCost:
        if policy not in POLICIES:
            raise ValueError(f"policy: {policy!r} is not one of {', '.join(POLICIES)}")
        return getattr(self, POLICIES[policy].cost)(m, s)

    # -- phases --------------------------------------------------------------------

    def memory(self, policy: str, m: ModelShape, s: StepShape, kv_total: int) -> tuple[int, int, bool]:
        """(device bytes, host bytes, KV streamed) the policy needs to hold kv_total bytes of KV."""
        act = self.activation_bytes(m, s)
        if policy == "gpu_offload":
            resident = 2 * m.embed_bytes + 2 * m.layer_weight_bytes + act
            kv_on_device = resident + kv_total <= self.device_memory
            return (resident + (kv_total if kv_on_device else 0), m.weight_bytes + (0 if kv_on_device else kv_total),
                    not kv_on_device)
        linear_on = POLICIES[policy].linear_on
        weights_dev, weights_host = (m.weight_bytes, 0) if linear_on == "device" else (0, m.weight_bytes)
        if on_host(policy):
            return weights_dev + (0 if linear_on == "host" else act), weights_host + kv_total + act, False
        return weights_dev + kv_total + act, weights_host, False

    def estimate(self, policy: str, phase: str, m: ModelShape, b: BatchShape) -> Estimate:
        if policy not in POLICIES:
            raise ValueError(f"policy: {policy!r} is not one of {', '.join(POLICIES)}")
        if phase not in PHASES:
            raise ValueError(f"phase: {phase!r} is not one of {', '.join(PHASES)}")
        s, n = phase_step(phase, b)
        dev, host, streamed = self.memory(policy, m, s, b.batch * b.max_context * m.kv_bytes_per_token(b.kv_bytes))
        c = self.gpu_offload(m, s, streamed) if policy == "gpu_offload" else self.step(policy, m, s)
        why = ""
        if dev > self.device_memory:
            why = f"needs {_gib(dev)} of device memory, {_gib(self.device_memory)} available"
        elif host > self.hw.host_memory_bytes:
            why = f"needs {_gib(host)} of host memory, {_gib(self.hw.host_memory_bytes)} available"
        return Estimate(policy, phase, c.seconds * n, c.compute_s * n, c.transfer_s * n, c.overlap_s * n, int(dev),
                        int(host), feasible=not why, why_not=why)

    def switch_seconds(self, prefill_policy: str, decode_policy: str, m: ModelShape, b: BatchShape) -> float:
        """KV written by a device prefill must reach the host tier before a host decode reads it."""
        if on_host(prefill_policy) == on_host(decode_policy):
            return 0.0
        kv = b.batch * b.input_len * m.kv_bytes_per_token(b.kv_bytes)
        bw = self.hw.d2h_pinned if on_host(decode_policy) else self.hw.h2d_pinned
        return kv / bw


def _kv_bytes(s: StepShape) -> int:
    return BYTES[s.kv_dtype]


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"
