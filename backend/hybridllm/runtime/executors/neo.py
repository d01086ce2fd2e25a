"""NEO's asymmetric pipelining: the device's linear work for sub-batch A overlaps the
host's attention for sub-batch B, layer by layer.

A holds prefills and device decodes (attention on the device; a fresh prefill whose
KV belongs on the host tier also attends on the device and has its K/V written to
the host tier as the layer finishes). B holds host decodes (attention on the host
tier, in a worker thread; torch and OpenVINO release the GIL, so the two overlap).

On CUDA, B's device work runs on its own stream, so it never waits behind A's kernels:
its Q/K/V go down into pinned buffers with an async copy and an event, the worker waits
on that event alone, and writes the output into a pinned buffer that goes back up async.
Host-bound prefills' K/V go down the same way into two pinned slots that the worker files
into the host tier while the device goes on. Buffers, stream and events are made once,
at start-up. On a CPU-only machine the same
code runs, correctly, on the same cores, with plain copies.
"""
from __future__ import annotations

import contextlib
import itertools
import logging
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F

from ...attention.kv_cache import KVCacheTier
from ...models.llama import LlamaModel
from ...kv import Tier
from ...scheduler import StepInput, SubBatch
from ..kv_copy import KVCopier
from .base import Parts, StepResult
from ..step_prep import prepare_step, prompt_rows
from .partition import to_host
from ..trace import NullTracer, Tracer

log = logging.getLogger("hybridllm")
HOST = torch.device("cpu")


class _Staging:
    """Pinned host buffers, a stream and an event for B's hand-off on CUDA."""

    def __init__(self, max_tokens: int, num_heads: int, num_kv_heads: int, head_dim: int, device: torch.device,
                 max_prefill_tokens: int = 0, kv_dtype: torch.dtype = torch.float32):
        def pinned(*shape, dtype=torch.float32):
            return torch.empty(*shape, dtype=dtype, pin_memory=True)
        self.max_tokens = max_tokens
        self.q = pinned(max_tokens, num_heads, head_dim)              # [Tmax, H, D]
        self.k = pinned(max_tokens, num_kv_heads, head_dim)           # [Tmax, KVH, D]
        self.v = pinned(max_tokens, num_kv_heads, head_dim)           # [Tmax, KVH, D]
        self.out = pinned(max_tokens, num_heads * head_dim)           # [Tmax, H * D]
        self.stream = torch.cuda.Stream(device)
        self.ready = torch.cuda.Event()                               # B's Q/K/V of this layer are on the host
        # Host-bound prefills' K/V: two slots, so layer i+1 lands while the worker files layer i away.
        self.max_prefill_tokens = max_prefill_tokens
        self.kv = [pinned(2, max_prefill_tokens, num_kv_heads, head_dim, dtype=kv_dtype)
                   for _ in range(2)] if max_prefill_tokens else []   # [K/V, Tmax, KVH, D] per slot
        self.kv_ready = [torch.cuda.Event() for _ in self.kv]

    def down(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """Async device->pinned copies on B's stream (the current one when called)."""
        t = q.shape[0]
        outs = []
        for x, buf in ((q, self.q), (k, self.k), (v, self.v)):
            dst = buf[:t]
            dst.copy_(x.float(), non_blocking=True)
            outs.append(dst)
        self.ready.record()
        return outs


class NeoRunner:
    def __init__(self, model: LlamaModel, device_attention, host_attention, host_tier: KVCacheTier,
                 block_size: int, max_host_tokens: int = 256, max_prefill_tokens: int = 2048,
                 tracer: Tracer | NullTracer | None = None, copier: KVCopier | None = None):
        self.model = model
        self.copier = copier                          # swaps land before the first layer reads the KV
        self.device_attention = device_attention      # over the device tier
        self.host_attention = host_attention          # HostAttention over the host tier
        self.host_tier = host_tier
        self.block_size = block_size                  # the device tier's
        self.host_block_size = host_tier.layout.block_size
        self.device = model.device
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="hybridllm-host-attn")
        self.tracer = tracer or NullTracer()
        cfg = model.cfg
        self.staging = (_Staging(max_host_tokens, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim,
                                 self.device, max_prefill_tokens, host_tier.layout.dtype)
                        if self.device.type == "cuda" else None)
        self._filing: list = [None, None]                # per slot: the worker's job filing K/V into the host tier
        self._filing_error: str | None = None

    @torch.inference_mode()
    def execute(self, batches: list[SubBatch]) -> StepResult:
        """The scheduler's sub-batches: A on the device tier, A's fresh prefills bound for the host tier,
        and B (host attention)."""
        failed: dict[str, str] = {}
        a_dev = [s for x in batches if x.part == "A" and x.tier == Tier.DEVICE for s in x.seqs]
        a_d2h = [s for x in batches if x.part == "A" and x.tier == Tier.HOST for s in x.seqs]
        b = [s for x in batches if x.part == "B" for s in x.seqs]
        m = self.model
        tr = self.tracer
        a = a_dev + a_d2h
        # A's metadata covers its device-tier sequences; the host-bound prefills only need their slots.
        st_a = prepare_step(a_dev, self.block_size, m, self.device, with_rope=False) if a_dev else None
        st_b = prepare_step(b, self.host_block_size, m, HOST) if b else None
        n_dev = sum(len(s.token_ids) for s in a_dev)
        ids_a, pos_a, sample_a = _with_fresh_prefills(st_a, a_d2h, n_dev, self.device)
        prompt_a, spans_a = _prompt_rows_a(st_a, a_d2h, n_dev, self.device)        # prompt logprobs' rows of A
        rope_a = m.rope_tables(pos_a) if a else None                              # [Ta, 1, D] each, all layers
        # B's device work goes on its own stream when it fits the pinned buffers.
        stg = self.staging if b and self.staging is not None and st_b.md.num_tokens <= self.staging.max_tokens \
            else None
        on_b = _stream_ctx(stg)
        if stg is not None:
            stg.stream.wait_stream(torch.cuda.current_stream(self.device))    # st_b's tensors are ready
        h_a = m.embed(ids_a) if a else None                                        # [Ta, hidden]
        with on_b():
            h_b = m.embed(st_b.input_ids) if b else None                           # [Tb, hidden]
        d2h = self._d2h_plan(a_d2h, n_dev) if a_d2h else None
        if self.copier is not None:
            self.copier.wait()
        for i in range(m.cfg.num_hidden_layers):
            fut = None
            if h_b is not None:
                with on_b(), tr.span("device B", f"L{i} B linear-in", tokens=h_b.shape[0]):
                    qb, kb, vb = m.attn_inputs(i, h_b, st_b.rope)
                    qb, kb, vb = stg.down(qb, kb, vb) if stg is not None else to_host(qb, kb, vb)
                fut = self.pool.submit(self._host_attn, i, qb, kb, vb, st_b.md, stg)
            if h_a is not None:
                with tr.span("device", f"L{i} A", tokens=h_a.shape[0]):
                    q, k, v = m.attn_inputs(i, h_a, rope_a)
                    o = self._attn_a(i, q, k, v, st_a, n_dev, d2h)
                    h_a = m.attn_finish(i, h_a, o)
            if fut is not None:
                try:
                    ob = fut.result()
                except Exception as e:     # fail B's requests only; A carries on
                    log.exception("host attention failed at layer %d", i)
                    failed.update({s.request_id: f"host attention failed: {e}" for s in b})
                    h_b = None
                    continue
                with on_b(), tr.span("device B", f"L{i} B linear-out", tokens=h_b.shape[0]):
                    h_b = m.attn_finish(i, h_b, ob.to(self.device, non_blocking=True).to(h_b.dtype))
        filing_error = self._await_filing()
        if filing_error:
            failed.update({s.request_id: filing_error for s in a_d2h})
        if stg is not None:
            cur = torch.cuda.current_stream(self.device)
            cur.wait_stream(stg.stream)                 # B's last layer is done before its logits
            if h_b is not None:
                h_b.record_stream(cur)                  # made on B's stream, read on this one
        logits = []
        # Prompt logprobs' rows: A's, then B's (a host request's later prefill chunks run in B).
        prompt, spans = [], ()
        if h_a is not None and prompt_a is not None:
            prompt.append(m.logits(h_a[prompt_a]))                                 # [Ra, vocab]
            spans += spans_a
        if h_b is not None and st_b.prompt_index is not None:
            prompt.append(m.logits(h_b[st_b.prompt_index]))                        # [Rb, vocab]
            spans += st_b.prompt_spans
        if h_a is not None and sample_a.numel():
            logits.append(m.logits(h_a[sample_a]))
        if h_b is not None and st_b.sample_index.numel():
            logits.append(m.logits(h_b[st_b.sample_index]))
        # Rows follow the order sampled sequences appear in `a + b`.
        order = tuple(s.request_id for s in a if s.sample) + \
            (tuple(s.request_id for s in b if s.sample) if h_b is not None else ())
        out = torch.cat(logits) if logits else torch.empty((0, m.cfg.vocab_size), device=self.device)
        # A step with host decodes ran NEO's pipeline; one without ran like gpu_only.
        return StepResult(out, order, failed, "neo" if b else "gpu_only",
                          prompt_logits=torch.cat(prompt) if prompt else None, prompt_spans=spans)

    def _host_attn(self, i, q, k, v, md, stg: _Staging | None):
        if stg is not None:
            stg.ready.synchronize()                     # B's Q/K/V of layer i have landed in pinned memory
        with self.tracer.span("host", f"L{i} B attention", tokens=q.shape[0]):
            o = self.host_attention.forward(i, q, k, v, md)                     # [Tb, H * D]
        if stg is None:
            return o
        # The previous layer's upload from this buffer is done: it precedes `ready` on B's stream.
        out = stg.out[:o.shape[0]]
        out.copy_(o)
        return out

    def _d2h_plan(self, seqs: list[StepInput], offset: int):
        """Token ranges (within A) and host slots of the fresh prefills whose KV goes to the host tier."""
        bs = self.host_block_size
        sw = self.model.cfg.sliding_window
        spans, slots, start = [], [], offset
        for s in seqs:
            n = len(s.token_ids)
            mask = None
            if sw is not None and n > sw:       # causal and windowed, built once per step for every layer
                p = torch.arange(n, device=self.device)
                mask = (p[None, :] <= p[:, None]) & (p[:, None] - p[None, :] < sw)   # [n, n]
            spans.append((start, start + n, mask))
            slots += [s.block_table[p // bs] * bs + p % bs for p in range(n)]
            start += n
        slots = torch.tensor(slots, dtype=torch.int64)
        return spans, slots // bs, slots % bs

    def _attn_a(self, i, q, k, v, st, n_dev: int, d2h) -> torch.Tensor:
        """q: [Ta, H, D] -> [Ta, H * D]; device-tier sequences first, then the host-bound prefills."""
        if d2h is None:
            return self.device_attention.forward(i, q, k, v, st.md)
        out = torch.empty(q.shape[0], q.shape[1] * q.shape[2], dtype=q.dtype, device=q.device)
        if n_dev:
            out[:n_dev] = self.device_attention.forward(i, q[:n_dev], k[:n_dev], v[:n_dev], st.md)
        spans, blk, off = d2h
        kc, vc = self.host_tier.key_cache[i], self.host_tier.value_cache[i]
        for lo, hi, mask in spans:
            # A fresh prefill attends only to itself: causal SDPA over its own K/V, on the device.
            o = F.scaled_dot_product_attention(q[lo:hi].transpose(0, 1)[None], k[lo:hi].transpose(0, 1)[None],
                                               v[lo:hi].transpose(0, 1)[None], attn_mask=mask,
                                               is_causal=mask is None, enable_gqa=True)
            out[lo:hi] = o[0].transpose(0, 1).reshape(hi - lo, -1)
        lo = spans[0][0]
        stg = self.staging
        if stg is None or not stg.kv or q.shape[0] - lo > stg.max_prefill_tokens:
            kc[blk, :, off] = k[lo:].to(HOST, kc.dtype)                       # this layer's K/V to the host tier
            vc[blk, :, off] = v[lo:].to(HOST, vc.dtype)
            return out
        # CUDA: an async copy to a pinned slot; the worker files it into the host tier once it lands,
        # so this thread goes on launching the layer instead of waiting for it.
        slot = i % 2
        self._await_slot(slot)
        buf = stg.kv[slot][:, :q.shape[0] - lo]                                 # [2, Tp, KVH, D]
        buf[0].copy_(k[lo:].to(kc.dtype), non_blocking=True)
        buf[1].copy_(v[lo:].to(vc.dtype), non_blocking=True)
        stg.kv_ready[slot].record()
        self._filing[slot] = self.pool.submit(_file_kv, stg.kv_ready[slot], buf, kc, vc, blk, off)
        return out

    def _await_slot(self, slot: int) -> None:
        job, self._filing[slot] = self._filing[slot], None
        if job is None:
            return
        try:
            job.result()
        except Exception as e:                  # reported for the step's host-bound prefills at its end
            log.exception("filing prefill K/V into the host tier failed")
            self._filing_error = self._filing_error or f"host KV write failed: {e}"

    def _await_filing(self) -> str | None:
        """The host tier holds every host-bound prefill's K/V before the step ends; the error if not."""
        for slot in range(len(self._filing)):
            self._await_slot(slot)
        error, self._filing_error = self._filing_error, None
        return error


def _file_kv(ready, buf: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor, blk: torch.Tensor, off: torch.Tensor):
    ready.synchronize()
    kc[blk, :, off] = buf[0]
    vc[blk, :, off] = buf[1]


def _stream_ctx(stg: _Staging | None):
    return (lambda: torch.cuda.stream(stg.stream)) if stg is not None else contextlib.nullcontext


def _with_fresh_prefills(st, fresh: list[StepInput], offset: int, device: torch.device):
    """input_ids [Ta], positions [Ta] and sample_index [S] of sub-batch A: the device-tier sequences
    (st, may be None) followed by the fresh prefills whose KV goes to the host tier."""
    ids = [st.input_ids] if st is not None else []
    pos = [st.positions] if st is not None else []
    rows = [st.sample_index] if st is not None else []
    start = offset
    for s in fresh:
        n = len(s.token_ids)
        ids.append(torch.tensor(s.token_ids, dtype=torch.int64, device=device))
        pos.append(torch.arange(s.num_computed_tokens, s.num_computed_tokens + n, device=device))
        if s.sample:
            rows.append(torch.tensor([start + n - 1], dtype=torch.int64, device=device))
        start += n
    if not ids:
        return None, None, None
    return torch.cat(ids), torch.cat(pos), (torch.cat(rows) if rows else torch.zeros(0, dtype=torch.int64,
                                                                                      device=device))


def _prompt_rows_a(st, fresh: list[StepInput], offset: int, device: torch.device):
    """Sub-batch A's rows that score prompt tokens: the device-tier sequences' (st, may be None), then
    the fresh prefills' (from row `offset`)."""
    index = [st.prompt_index] if st is not None and st.prompt_index is not None else []
    spans = list(st.prompt_spans) if st is not None else []
    starts = list(itertools.accumulate((len(s.token_ids) for s in fresh), initial=offset))
    extra, more = prompt_rows(fresh, starts[:-1], device)
    if extra is not None:
        index.append(extra)
        spans += more
    return (torch.cat(index) if index else None), tuple(spans)


def build(parts: Parts) -> NeoRunner:
    spec = parts.spec
    return NeoRunner(parts.model, parts.device_attention, parts.host_attention, parts.host_attention.tier,
                     parts.device_tier.layout.block_size,
                     max_host_tokens=spec.max_num_seqs,          # B holds host decodes: one token each
                     max_prefill_tokens=spec.max_num_batched_tokens, tracer=parts.tracer, copier=parts.copier)
