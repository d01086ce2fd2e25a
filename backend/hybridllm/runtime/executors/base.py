"""The executor contract: every policy's executor runs its sub-batches of a step and returns a StepResult.

Executors are built once, at start-up, from the shared Parts of a runtime (the resolved spec, the
model on its device, the KV tiers and the attention over them), by their module's `build(parts)`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

import torch

from ...attention import DeviceAttention
from ...attention.host import HostAttention
from ...attention.kv_cache import KVCacheTier
from ...models.llama import LlamaModel
from ...scheduler import StepInput, SubBatch
from ..kv_copy import KVCopier
from ..spec import RuntimeSpec
from ..trace import NullTracer, Tracer


@dataclass(frozen=True)
class StepResult:
    logits: torch.Tensor                    # [S, vocab] float32, one row per sampled sequence
    sampled: tuple[str, ...]                # request ids of the rows, in row order
    failed: dict[str, str] = field(default_factory=dict)   # request_id -> error; they end with "error"
    policy: str = ""                        # what ran, for steps_by_policy ("" : the executor's policy)
    greedy: torch.Tensor | None = None      # [S] int64 argmax of each row, where the executor had it cheaply
    # Prompt logprobs: [R, vocab] logits of the rows that score prompt tokens, for the sequences whose
    # StepInput.num_prompt_logits asks; spans: (request_id, first position, rows) in row order.
    prompt_logits: torch.Tensor | None = None
    prompt_spans: tuple[tuple[str, int, int], ...] = ()

    @staticmethod
    def merge(results: Sequence["StepResult"]) -> "StepResult":
        failed: dict[str, str] = {}
        for r in results:
            failed.update(r.failed)
        greedy = None
        if all(r.greedy is not None for r in results):
            greedy = torch.cat([r.greedy.cpu() for r in results])
        prompt = [r.prompt_logits.cpu() for r in results if r.prompt_logits is not None]
        return StepResult(torch.cat([r.logits.to(results[0].logits.device) for r in results]),
                          tuple(rid for r in results for rid in r.sampled), failed, greedy=greedy,
                          prompt_logits=torch.cat(prompt) if prompt else None,
                          prompt_spans=tuple(sp for r in results for sp in r.prompt_spans))


def head(logits, h: torch.Tensor, st, ids: tuple[str, ...], **kw) -> StepResult:
    """The LM head on the sampled rows and, where asked, on the rows that score prompt tokens.
    logits: the executor's head, [n, hidden] -> [n, vocab]; st: the step's StepTensors."""
    prompt = logits(h[st.prompt_index]) if st.prompt_index is not None else None      # [R, vocab]
    return StepResult(logits(h[st.sample_index]), ids, prompt_logits=prompt, prompt_spans=st.prompt_spans, **kw)


def sampled_ids(seqs: Sequence[StepInput]) -> tuple[str, ...]:
    return tuple(s.request_id for s in seqs if s.sample)


def seqs_of(batches: Sequence[SubBatch]) -> list[StepInput]:
    """The sequences of an executor's sub-batches (one, unless prefill and decode share an executor)."""
    return [s for b in batches for s in b.seqs]


class Executor(Protocol):
    def execute(self, batches: Sequence[SubBatch]) -> StepResult: ...


@dataclass(frozen=True)
class Parts:
    """What a runtime's executors share, made once by the factory."""
    spec: RuntimeSpec
    model: LlamaModel                       # on the compute device (decoder layers on the host under gpu_offload)
    device_tier: KVCacheTier | None
    device_attention: DeviceAttention | None
    host_attention: HostAttention | None    # owns the host tier
    tracer: Tracer | NullTracer
    copier: KVCopier                        # the step's tier moves; wait() before the first KV read
    max_model_len: int                      # the longest context a request may reach

    @property
    def device(self) -> torch.device:
        return self.spec.device


def set_torch_threads(n: int | None) -> None:
    """Torch's intra-op threads are process-wide: under auto, cpu_only (1 thread, so torch's idle workers
    leave OpenVINO's cores alone) and torch executors on the CPU (all cores) can alternate step by step."""
    if n and torch.get_num_threads() != n:
        torch.set_num_threads(n)
