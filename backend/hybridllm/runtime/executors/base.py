"""The executor contract: every policy's executor takes a step's StepInputs and returns a StepResult.

Executors are built once, at start-up, from the shared Parts of a runtime (the model on its
device, the KV tiers and the attention over them), by the builder the policy table names.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

import torch

from ...attention import DeviceAttention
from ...attention.host import HostAttention
from ...config import EngineConfig
from ...kv import KVCacheTier
from ...models.config import ModelConfig
from ...models.llama import LlamaModel
from ...scheduler import StepInput
from ..cpu.host_precision import HostPrecision
from ..trace import NullTracer, Tracer


@dataclass(frozen=True)
class StepResult:
    logits: torch.Tensor                    # [S, vocab] float32, one row per sampled sequence
    sampled: tuple[str, ...]                # request ids of the rows, in row order
    failed: dict[str, str] = field(default_factory=dict)   # request_id -> error; they end with "error"
    policy: str = ""                        # what ran, for steps_by_policy ("" : the executor's policy)
    greedy: torch.Tensor | None = None      # [S] int64 argmax of each row, where the executor had it cheaply

    @staticmethod
    def merge(results: Sequence["StepResult"]) -> "StepResult":
        failed: dict[str, str] = {}
        for r in results:
            failed.update(r.failed)
        greedy = None
        if all(r.greedy is not None for r in results):
            greedy = torch.cat([r.greedy.cpu() for r in results])
        return StepResult(torch.cat([r.logits.to(results[0].logits.device) for r in results]),
                          tuple(rid for r in results for rid in r.sampled), failed, greedy=greedy)


def sampled_ids(seqs: Sequence[StepInput]) -> tuple[str, ...]:
    return tuple(s.request_id for s in seqs if s.sample)


class Executor(Protocol):
    def execute(self, seqs: list[StepInput]) -> StepResult: ...


@dataclass(frozen=True)
class Parts:
    """What a runtime's executors share, made once by the factory."""
    config: EngineConfig
    model_path: Path
    model_config: ModelConfig
    model: LlamaModel                       # on the compute device (decoder layers on the host under gpu_offload)
    device: torch.device
    device_tier: KVCacheTier | None
    device_attention: DeviceAttention | None
    host_attention: HostAttention | None    # owns the host tier
    tracer: Tracer | NullTracer
    torch_threads: int                      # torch's threads at start-up, for executors whose linear work is torch
    host_precision: HostPrecision           # the OpenVINO linear graphs' weights and arithmetic (cpu_only)
    max_model_len: int                      # the longest context a request may reach


def set_torch_threads(n: int | None) -> None:
    """Torch's intra-op threads are process-wide: under auto, cpu_only (1 thread, so torch's idle workers
    leave OpenVINO's cores alone) and torch executors on the CPU (all cores) can alternate step by step."""
    if n and torch.get_num_threads() != n:
        torch.set_num_threads(n)
