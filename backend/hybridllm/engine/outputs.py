"""What the engine hands back to callers."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: tuple[int, ...]
    text: str                       # all output text so far
    token_ids: tuple[int, ...]      # all output tokens so far
    delta_text: str                 # text new since the last output of this request
    delta_token_ids: tuple[int, ...]
    finish_reason: str | None       # None while running; "stop" | "length" | "abort" | "error"
    error: str | None = None        # why, when finish_reason == "error"

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(frozen=True)
class EngineStats:
    num_running: int
    num_waiting: int
    blocks_used: dict[str, int]     # per tier ("device", "host")
    blocks_total: dict[str, int]
    num_preemptions: int
    num_steps: int
    steps_by_policy: dict[str, int]


@dataclass(frozen=True)
class StreamDelta:
    """One piece of a streamed generation: the new text and tokens since the last piece."""
    text: str
    token_ids: tuple[int, ...]
    finish_reason: str | None
