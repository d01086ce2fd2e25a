"""What the engine hands back to callers."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RequestOutput:
    """One request's news from one step: the delta, and counts.

    The whole generation (text, token_ids) is attached once, to the final output, so a stream of
    L tokens costs O(L) in all rather than a fresh copy of everything so far at every step.
    """
    request_id: str
    delta_text: str                 # text new since the last output of this request
    delta_token_ids: tuple[int, ...]
    num_prompt_tokens: int
    num_output_tokens: int          # output tokens so far
    finish_reason: str | None       # None while running; "stop" | "length" | "abort" | "error"
    error: str | None = None        # why, when finish_reason == "error"
    prompt: str | None = None       # final output only, as given
    text: str | None = None         # final output only: all output text (stop strings cut off)
    token_ids: tuple[int, ...] | None = None    # final output only: all output tokens
    # With SamplingParams.logprobs set: the delta tokens' TokenLogprob (engine/sampler.py), the sum of
    # every output token's logprob so far, and on the final output all of them.
    delta_logprobs: tuple = ()
    cumulative_logprob: float | None = None
    logprobs: tuple | None = None
    # With SamplingParams.prompt_logprobs set, on the first output and the final one: a TokenLogprob for
    # each prompt token after the first (the first has none), in order.
    prompt_logprobs: tuple | None = None

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
    # Prefix caching, cumulative per tier: prompt tokens looked up and found (vLLM's queries / hits).
    prefix_cache_queries: dict[str, int] = field(default_factory=dict)
    prefix_cache_hits: dict[str, int] = field(default_factory=dict)
    blocks_cached: dict[str, int] = field(default_factory=dict)    # unheld blocks kept for their prefix
    cache_evictions: dict[str, int] = field(default_factory=dict)
    kv_promotions: int = 0          # host hits copied up to the device tier
    kv_demotions: int = 0           # evicted device blocks copied down to the host tier
    host_hit_placements: int = 0    # host hits attended where they are (request placed on the host tier)


@dataclass(frozen=True)
class StreamDelta:
    """One piece of a streamed generation: the new text and tokens since the last piece."""
    text: str
    token_ids: tuple[int, ...]
    finish_reason: str | None
