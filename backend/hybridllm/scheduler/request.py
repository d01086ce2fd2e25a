"""Request: the engine's mutable record of one generation."""
from __future__ import annotations

import enum

from ..sampling_params import SamplingParams
from .step import is_decode


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED_STOPPED = "stop"
    FINISHED_LENGTH = "length"
    FINISHED_ABORTED = "abort"
    FINISHED_ERROR = "error"

    @property
    def finished(self) -> bool:
        return self in (RequestStatus.FINISHED_STOPPED, RequestStatus.FINISHED_LENGTH,
                        RequestStatus.FINISHED_ABORTED, RequestStatus.FINISHED_ERROR)


class Request:
    def __init__(self, request_id: str, prompt: str | None, prompt_token_ids: list[int],
                 params: SamplingParams, detokenizer, generator, max_total_tokens: int):
        self.request_id = request_id
        self.prompt = prompt
        self.prompt_token_ids = prompt_token_ids
        self.params = params
        self.output_token_ids: list[int] = []
        self.num_computed_tokens = 0    # tokens whose K/V are in the cache
        self.status = RequestStatus.WAITING
        self.detokenizer = detokenizer  # the engine's IncrementalDetokenizer
        self.generator = generator      # torch.Generator for seeded sampling, None when greedy
        self.max_total_tokens = max_total_tokens  # prompt + output may not pass this (context / pool limit)
        self.text = ""                  # output text so far, stop strings cut off
        self.num_sent_chars = 0         # how much of `text` has been streamed
        self.num_sent_tokens = 0
        self.num_preemptions = 0
        self.error: str | None = None
        self.kv_tiers = None            # (prefill tier, decode tier), set when admitted
        self.promote_hit = False        # copy its host-cached prefix to the device tier when admitted there
        self.logprobs: list = []        # engine.sampler.TokenLogprob per output token, when params.logprobs is set
        self.cumulative_logprob = 0.0
        # Prefix caching (kv/prefix_cache.py): the chunk hash chain of its tokens so far, and how many
        # of its blocks on named_tier are named in the cache.
        self.prefix_chain: list[bytes] = []
        self.named_tier = None
        self.num_named_blocks = 0
        # True: never start from cached blocks (a request that needs every prompt token's logits).
        self.skip_cache_hits = params.prompt_logprobs is not None
        # params.prompt_logprobs: engine.sampler.TokenLogprob of prompt tokens 1.., in order (filled by
        # the engine as prefill chunks run; the scheduler asks for the rows not scored yet).
        self.prompt_logprobs: list = []

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def decoding(self) -> bool:
        """Whether its next step is a decode (scheduler.step.is_decode)."""
        return is_decode(self.num_tokens - self.num_computed_tokens, self.num_computed_tokens, self.num_tokens)

    def token_ids(self, start: int, end: int) -> tuple[int, ...]:
        """Tokens [start, end) of prompt + output, without concatenating the two."""
        p = len(self.prompt_token_ids)
        if start >= p:
            return tuple(self.output_token_ids[start - p:end - p])
        if end <= p:
            return tuple(self.prompt_token_ids[start:end])
        return tuple(self.prompt_token_ids[start:]) + tuple(self.output_token_ids[:end - p])

    @property
    def finish_reason(self) -> str | None:
        return self.status.value if self.status.finished else None
