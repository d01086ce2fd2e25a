"""CostModel: predicted time and memory of each policy for a phase of a workload.

Pure functions of (ModelShape, BatchShape, HardwareProfile); no clocks, no I/O.
Prefill is one step over the whole batch; decode is output_len - 1 steps, each
costed at the mean decode context (step time is close to linear in context).
"""
from __future__ import annotations

from dataclasses import dataclass

from .profile import HardwareProfile
from .shapes import BatchShape, ModelShape

POLICIES = ("gpu_only", "gpu_offload", "cpu_only", "partition")
PHASES = ("prefill", "decode")
KV_ON_HOST = {"cpu_only": True, "partition": True, "gpu_only": False, "gpu_offload": False}


@dataclass(frozen=True)
class Estimate:
    policy: str
    phase: str
    seconds: float               # wall time of the phase
    compute_s: float             # device + host compute, as if run back to back
    transfer_s: float            # PCIe (or memcpy) traffic
    overlap_s: float             # how much of compute + transfer runs concurrently
    device_bytes: int            # device memory the policy needs
    host_bytes: int              # host memory the policy needs
    feasible: bool
    why_not: str = ""            # set when not feasible

    @property
    def pcie_fraction(self) -> float:
        return self.transfer_s / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class Steps:
    """The per-step numbers of one phase before they are combined into an Estimate."""
    tokens: int                  # tokens in the step
    seqs: int                    # sequences in the step
    context: float               # per-sequence context length attention reads
    steps: int                   # how many such steps the phase takes


def phase_steps(phase: str, b: BatchShape) -> Steps:
    if phase == "prefill":
        return Steps(b.batch * b.input_len, b.batch, b.input_len, 1)
    return Steps(b.batch, b.batch, b.mean_decode_context, max(b.output_len - 1, 0))


class CostModel:
    def __init__(self, profile: HardwareProfile, pipelined_partition: bool = False,
                 device_memory_bytes: int | None = None):
        self.hw = profile
        # The partition executor overlaps device and host work only once it pipelines sub-batches.
        self.pipelined_partition = pipelined_partition
        self.device_memory = min(profile.device_memory_bytes, device_memory_bytes or profile.device_memory_bytes)

    # -- building blocks (per step) ------------------------------------------------

    def _gemms(self, table, m: ModelShape, tokens: int, seqs: int) -> float:
        layer = sum(table(tokens, n * k) for n, k in m.gemms)
        return m.num_layers * layer + table(seqs, m.vocab * m.hidden)        # + the LM head on sampled rows

    def _attention(self, where: str, phase: str, m: ModelShape, s: Steps, kv_dtype: str, kv_bytes: int) -> float:
        if phase == "decode":
            x, y = s.seqs, s.seqs * s.context * 2 * m.num_kv_heads * m.head_dim * kv_bytes
        else:
            # Causal: a new token sees (context + 1) / 2 keys on average; QK^T and PV are 2 FLOPs per MAC each.
            x, y = s.tokens, 4 * (s.context + 1) / 2 * m.num_heads * m.head_dim
        if where == "device":
            table = self.hw.device_attention_decode if phase == "decode" else self.hw.device_attention_prefill
        else:
            table = self.hw.host_attention(phase, kv_dtype)
        return m.num_layers * table(x, y)

    def _activations(self, m: ModelShape, s: Steps) -> int:
        per_token = (4 * m.hidden + 2 * m.intermediate + (m.num_heads + 2 * m.num_kv_heads) * m.head_dim)
        return int(s.tokens * per_token * m.act_bytes + s.seqs * m.vocab * 4)

    def _fixed(self, m: ModelShape) -> float:
        return self.hw.launch_overhead_s + m.num_layers * self.hw.layer_overhead_s

    # -- policies ------------------------------------------------------------------

    def estimate(self, policy: str, phase: str, m: ModelShape, b: BatchShape) -> Estimate:
        if policy not in POLICIES:
            raise ValueError(f"policy: {policy!r} is not one of {', '.join(POLICIES)}")
        if phase not in PHASES:
            raise ValueError(f"phase: {phase!r} is not one of {', '.join(PHASES)}")
        s = phase_steps(phase, b)
        kv_total = b.batch * b.max_context * m.kv_bytes_per_token(b.kv_bytes)
        act = self._activations(m, s)
        hw = self.hw
        transfer = overlap = 0.0
        if policy == "gpu_only":
            compute = self._gemms(hw.device_gemm, m, s.tokens, s.seqs) + \
                self._attention("device", phase, m, s, b.kv_dtype, b.kv_bytes) + self._fixed(m)
            dev, host = m.weight_bytes + kv_total + act, 0
            step = compute
        elif policy == "cpu_only":
            compute = self._gemms(hw.host_gemm, m, s.tokens, s.seqs) + \
                self._attention("host", phase, m, s, b.kv_dtype, b.kv_bytes) + self._fixed(m)
            dev, host = 0, m.weight_bytes + kv_total + act
            step = compute
        elif policy == "gpu_offload":
            # FlexGen: weights stream layer by layer, the next layer's copy overlapping this layer's compute.
            # KV stays on the device when it fits beside two layers of weights, else it streams too.
            resident = 2 * m.embed_bytes + 2 * m.layer_weight_bytes + act
            kv_on_device = resident + kv_total <= self.device_memory
            per_layer_xfer = m.layer_weight_bytes / hw.h2d_pinned
            attn = self._attention("device", phase, m, s, b.kv_dtype, b.kv_bytes)
            if not kv_on_device:
                per_layer_xfer += (s.seqs * s.context * 2 * m.num_kv_heads * m.head_dim * b.kv_bytes) / hw.h2d_pinned
            per_layer_compute = (self._gemms(hw.device_gemm, m, s.tokens, s.seqs)
                                 - hw.device_gemm(s.seqs, m.vocab * m.hidden) + attn) / m.num_layers
            compute = per_layer_compute * m.num_layers + hw.device_gemm(s.seqs, m.vocab * m.hidden) + self._fixed(m)
            transfer = per_layer_xfer * m.num_layers
            if hw.device_is_host:       # a memcpy on the same cores: nothing overlaps
                step = compute + transfer
            else:
                overlap = (m.num_layers - 1) * min(per_layer_xfer, per_layer_compute)
                step = compute + transfer - overlap
            dev = resident + (kv_total if kv_on_device else 0)
            host = m.weight_bytes + (0 if kv_on_device else kv_total)
        else:  # partition: linear on the device, attention on the host over the host KV tier
            dev_l = self._gemms(hw.device_gemm, m, s.tokens, s.seqs) + self._fixed(m)
            host_l = self._attention("host", phase, m, s, b.kv_dtype, b.kv_bytes)
            q_kv = s.tokens * (m.num_heads + 2 * m.num_kv_heads) * m.head_dim * m.act_bytes
            out = s.tokens * m.num_heads * m.head_dim * m.act_bytes
            transfer = m.num_layers * (q_kv / hw.d2h_pinned + out / hw.h2d_pinned)
            compute = dev_l + host_l
            if self.pipelined_partition and not hw.device_is_host:
                # Two sub-batches: the device's linear work for one hides the host's attention for the other.
                overlap = min(dev_l, host_l + transfer) * (1 - 1 / (2 * m.num_layers))
            step = compute + transfer - overlap
            dev, host = m.weight_bytes + act, kv_total + act
        n = s.steps
        why = ""
        if dev > self.device_memory:
            why = f"needs {_gib(dev)} of device memory, {_gib(self.device_memory)} available"
        elif host > hw.host_memory_bytes:
            why = f"needs {_gib(host)} of host memory, {_gib(hw.host_memory_bytes)} available"
        return Estimate(policy, phase, step * n, compute * n, transfer * n, overlap * n, int(dev), int(host),
                        feasible=not why, why_not=why)

    def switch_seconds(self, prefill_policy: str, decode_policy: str, m: ModelShape, b: BatchShape) -> float:
        """KV written by a device prefill must reach the host tier before a host decode reads it."""
        if KV_ON_HOST[prefill_policy] == KV_ON_HOST[decode_policy]:
            return 0.0
        kv = b.batch * b.input_len * m.kv_bytes_per_token(b.kv_bytes)
        bw = self.hw.d2h_pinned if KV_ON_HOST[decode_policy] else self.hw.h2d_pinned
        return kv / bw


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"
