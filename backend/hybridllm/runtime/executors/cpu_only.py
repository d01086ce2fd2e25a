"""The cpu_only policy: the whole model on the host.

Linear layers run in compiled OpenVINO graphs (runtime/cpu/host_linear.py), the attention in the
runtime's HostAttention over the host KV tier, whose blocks the scheduler's BlockTables hand out. With
the ov_paged backend the whole model is one graph (cpu_fused), the PagedAttention op of each layer
bound once to that layer's host KV. Everything is compiled and allocated at start-up.
"""
from __future__ import annotations

import logging
import time

import torch

from ...attention.host import HostAttention
from ...models.llama import LlamaModel
from ...models.quantized import QuantizedCheckpoint
from ...scheduler import SubBatch
from ..kv_copy import KVCopier
from .base import Parts, StepResult, head, sampled_ids, seqs_of, set_torch_threads
from ..cpu.host_linear import HostLinearModel, HostLinearOptions
from ..step_prep import prepare_step

log = logging.getLogger("hybridllm")
HOST = torch.device("cpu")


class CpuOnlyRunner:
    def __init__(self, model: LlamaModel, linear: HostLinearModel, attention: HostAttention,
                 torch_threads: int = 1, copier: KVCopier | None = None):
        self.model = model              # on the host: embeddings and RoPE tables
        # OpenVINO owns the cores under cpu_only. Torch only embeds and samples, and its idle OpenMP workers
        # spin on the cores OpenVINO's threads need: with 2 torch threads a batch-1 step took up to 1.6x longer.
        self.torch_threads = torch_threads
        self.linear = linear
        self.attention = attention      # owns the host tier; in fused mode it only checks each step
        self.block_size = attention.layout.block_size
        self.copier = copier

    @torch.inference_mode()
    def execute(self, batches: list[SubBatch]) -> StepResult:
        seqs = seqs_of(batches)
        set_torch_threads(self.torch_threads)           # process-wide; see __init__
        st = prepare_step(seqs, self.block_size, self.model, HOST, with_rope=False)
        if self.copier is not None:
            self.copier.wait()
        cos, sin = self.linear.rope_tables(st.positions)                         # [T, D] each
        h = self.model.embed(st.input_ids).float()                               # [T, hidden]
        lin, attn = self.linear, self.attention
        ids = sampled_ids(seqs)
        if lin.fused:
            rows, n = st.sample_index, st.sample_index.numel()
            if st.prompt_index is not None:                   # prompt logprobs: their rows after the sampled ones
                rows = torch.cat([rows, st.prompt_index])
            if not rows.numel():
                # Nothing to sample (only prefill chunks): the step still writes K/V; row 0's logits are dropped.
                logits, _ = lin.run_model(h, cos, sin, attn.prepare(st.md), torch.zeros(1, dtype=torch.int64))
                return StepResult(logits[:0], ids)
            logits, argmax = lin.run_model(h, cos, sin, attn.prepare(st.md), rows)     # prepare checks md first
            prompt = logits[n:].clone() if st.prompt_index is not None else None      # the buffer is reused next step
            return StepResult(logits[:n], ids, greedy=argmax[:n], prompt_logits=prompt, prompt_spans=st.prompt_spans)
        for i in range(self.model.cfg.num_hidden_layers):
            q, k, v = lin.attn_inputs(i, h, cos, sin)
            o = attn.forward(i, q, k, v, st.md)                                  # [T, H * D]
            h = lin.attn_finish(i, h, o)
        if not st.sample_index.numel() and st.prompt_index is None:
            return StepResult(torch.empty((0, self.model.cfg.vocab_size)), ids)
        return head(lin.logits, h, st, ids)                                      # [S, vocab]

def build(parts: Parts) -> CpuOnlyRunner:
    t0 = time.perf_counter()
    spec = parts.spec
    # OpenVINO builds its graphs from host copies of the weights: the runtime's model when it is on the
    # host; its decoder layers when gpu_offload keeps them there (only the embedding and head are
    # copied); else a host copy loaded for the purpose and dropped once the graphs hold theirs.
    shared = parts.model.layers_on_host
    model = parts.model.host_view() if shared else LlamaModel.load(spec.model_path, HOST, spec.dtype)
    attention = parts.host_attention
    precision = spec.host_precision
    options = HostLinearOptions(precision=precision, cache_dir=spec.ov_cache_dir)
    kept = QuantizedCheckpoint.open(spec.model_path) if precision.source else None
    linear = None
    if attention.name == "ov_paged" and spec.cpu_fused:
        try:
            linear = HostLinearModel(model, options, fuse_with=attention, kept=kept)
        except Exception as e:  # noqa: BLE001 - the split graphs run with any attention path
            log.warning("cpu_only: the fused model is unavailable, running linear and attention apart (%s)", e)
    if linear is None:
        linear = HostLinearModel(model, options, kept=kept)
    if not shared:
        model.release_layers()
    log.info("cpu_only ready in %.1fs: attention=%s (%s), weights %s (%s)", time.perf_counter() - t0,
             attention.name, "inside one whole-model graph" if linear.fused else "between the linear graphs",
             precision.label, precision.reason)
    return CpuOnlyRunner(model, linear, attention, spec.cpu_torch_threads, parts.copier)
