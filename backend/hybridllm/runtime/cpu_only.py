"""The cpu_only policy: the whole model on the host.

Linear layers run in compiled OpenVINO graphs (runtime/host_linear.py), the
attention in HostAttention over the host KV tier, whose blocks are the ones the
KVCacheManager hands out. Everything is compiled and allocated here, once.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch

from ..attention.host import HostAttention, HostAttentionSpec
from ..config import EngineConfig
from ..kv import KVCacheManager, Tier
from ..models.config import ModelConfig
from ..models.llama import LlamaModel
from .host_linear import HostLinearModel, HostLinearOptions
from .model_runner import StepInput, prepare_step
from .ov_common import default_cache_dir

log = logging.getLogger("hybridllm")

FUSED_ENV = "HYBRIDLLM_CPU_FUSED"    # "0": linear graphs and HostAttention.forward apart, even with ov_paged
# OpenVINO owns the cores under cpu_only. Torch only embeds and samples, and its idle OpenMP workers
# spin on the cores OpenVINO's threads need: with 2 torch threads a batch-1 step took up to 1.6x longer.
TORCH_THREADS_ENV = "HYBRIDLLM_CPU_TORCH_THREADS"
_AUTO_KV = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}


def host_kv_precision(config: EngineConfig, model_dtype: torch.dtype) -> str:
    """kv_cache_dtype for the host tier: "auto" follows the model's dtype; u8 is allowed here."""
    return _AUTO_KV[model_dtype] if config.kv_cache_dtype == "auto" else config.kv_cache_dtype


class CpuOnlyRunner:
    """execute(seqs) -> logits, like ModelRunner, with host linear graphs and host attention."""

    def __init__(self, model: LlamaModel, linear: HostLinearModel, attention: HostAttention,
                 torch_threads: int = 1):
        self.model = model
        self.torch_threads = torch_threads
        self.linear = linear
        self.attention = attention      # owns the host tier; in fused mode it only checks each step
        self.block_size = attention.layout.block_size
        self.device = torch.device("cpu")

    @torch.inference_mode()
    def execute(self, seqs: list[StepInput]) -> torch.Tensor:
        """Runs the step; returns logits [num sampled seqs, vocab] in the order of `seqs`."""
        if torch.get_num_threads() != self.torch_threads:
            torch.set_num_threads(self.torch_threads)       # process-wide; see TORCH_THREADS_ENV
        st = prepare_step(seqs, self.block_size, self.device, self.device, self.model.cfg.sliding_window)
        cos, sin = self.linear.rope_tables(st.positions)                         # [T, D] each
        h = self.model.embed(st.input_ids).float()                               # [T, hidden]
        lin, attn = self.linear, self.attention
        if lin.fused:
            rows = st.sample_index
            if not rows.numel():
                # Nothing to sample (only prefill chunks): the step still writes K/V; row 0's logits are dropped.
                return lin.run_model(h, cos, sin, attn.prepare(st.md), torch.zeros(1, dtype=torch.int64))[:0]
            return lin.run_model(h, cos, sin, attn.prepare(st.md), rows)          # checks md first
        for i in range(self.model.cfg.num_hidden_layers):
            q, k, v = lin.attn_inputs(i, h, cos, sin)
            o = attn.forward(i, q, k, v, st.md)                                  # [T, H * D]
            h = lin.attn_finish(i, h, o)
        if not st.sample_index.numel():
            return torch.empty((0, self.model.cfg.vocab_size))
        return lin.logits(h[st.sample_index])                                    # [S, vocab]


def build_cpu_only(config: EngineConfig, model_path: Path, mc: ModelConfig,
                   reason: str = "forced by the policy option"):
    from .factory import Runtime   # factory imports this module lazily; import back the same way

    t0 = time.perf_counter()
    if config.device not in (None, "cpu"):
        log.info("policy cpu_only runs on the host; device=%s is not used", config.device)
    model = LlamaModel.load(model_path, "cpu", config.dtype)
    cache_dir = default_cache_dir()
    spec = HostAttentionSpec(
        num_layers=mc.num_hidden_layers, num_heads=mc.num_attention_heads, num_kv_heads=mc.num_key_value_heads,
        head_dim=mc.head_dim, kv_precision=host_kv_precision(config, model.dtype),
        sliding_window=mc.sliding_window, block_size=config.block_size, cache_dir=cache_dir)
    attention = HostAttention.create(spec, num_bytes=config.host_kv_bytes)
    kv = KVCacheManager({Tier.HOST: attention.tier}, attention.layout.block_size)
    options = HostLinearOptions.from_env()
    linear = None
    if attention.name == "ov_paged" and os.environ.get(FUSED_ENV, "1") != "0":
        try:
            linear = HostLinearModel(model, options, fuse_with=attention)
        except Exception as e:  # noqa: BLE001 - the split graphs run with any attention path
            log.warning("cpu_only: the fused model is unavailable, running linear and attention apart (%s)", e)
    if linear is None:
        linear = HostLinearModel(model, options)
    log.info("cpu_only ready in %.1fs: attention=%s (%s), %s KV in %d blocks of %d tokens (%d MiB), "
             "linear weights=%s", time.perf_counter() - t0, attention.name,
             "inside one whole-model graph" if linear.fused else "between the linear graphs",
             attention.layout.precision, attention.tier.num_blocks, attention.layout.block_size,
             attention.tier.num_bytes >> 20, linear.options.weights)
    runner = CpuOnlyRunner(model, linear, attention, int(os.environ.get(TORCH_THREADS_ENV) or 1))
    return Runtime({"cpu_only": runner}, "cpu_only", "cpu_only", kv, model, torch.device("cpu"),
                   f"{reason}; host attention {attention.name}: {attention.reason}")
