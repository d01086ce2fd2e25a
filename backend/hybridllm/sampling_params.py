"""SamplingParams: per-request decoding options (vLLM's names, defaults and semantics).

Penalties (engine/logits_processors.py) change the logits every row is picked from, greedy included:
- repetition_penalty (HF/vLLM): a token seen in the prompt or the output has a positive logit divided
  by it, a negative one multiplied; 1 is off;
- frequency_penalty / presence_penalty (OpenAI): minus f * (times in the output) and minus p * (in the
  output at all); 0 is off;
- min_tokens: EOS and stop_token_ids cannot be picked, and stop strings are not looked for, until this
  many tokens are out.
logprobs: None, or how many top tokens to report per position besides the chosen one (0: the chosen
token's only); logprobs are of the model's distribution before penalties and temperature.
prompt_logprobs: None, or how many top tokens to report per prompt position besides the prompt's own token
(0: its own only); every prompt token after the first gets one (vLLM's semantics).
min_p: drop tokens whose probability is below min_p times the most likely one's (after temperature); 0 is off.
stop_token_ids: tokens that end the request (kept in token_ids, not in the text), even with ignore_eos.
cache_salt: a tenant's key for prefix caching: cached prefixes are reused only by requests with the same salt.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0              # 0 or -1: no top-k
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    stop_token_ids: tuple[int, ...] = ()
    min_tokens: int = 0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logprobs: int | None = None
    cache_salt: str | None = None   # vLLM's: prefixes are shared only between requests with the same salt
    prompt_logprobs: int | None = None
    min_p: float = 0.0

    MAX_LOGPROBS = 20           # OpenAI's cap on top_logprobs
    MAX_CACHE_SALT_CHARS = 256

    def __post_init__(self):
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        elif isinstance(self.stop, list):
            object.__setattr__(self, "stop", tuple(self.stop))
        if not isinstance(self.max_tokens, int) or isinstance(self.max_tokens, bool) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        if not _number(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or self.top_k < -1:
            raise ValueError(f"top_k must be an integer >= -1 (0 or -1 disables it), got {self.top_k!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)
                                      or not 0 <= self.seed < 2**63):
            raise ValueError(f"seed must be None or an integer in [0, 2**63), got {self.seed!r}")
        if not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"stop must be a string or a list of non-empty strings, got {self.stop!r}")
        if not isinstance(self.ignore_eos, bool):
            raise ValueError(f"ignore_eos must be a bool, got {self.ignore_eos!r}")
        if isinstance(self.stop_token_ids, list):
            object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        if not isinstance(self.stop_token_ids, tuple) or not all(
                isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in self.stop_token_ids):
            raise ValueError(f"stop_token_ids must be a list of token ids >= 0, got {self.stop_token_ids!r}")
        if not isinstance(self.min_tokens, int) or isinstance(self.min_tokens, bool) or self.min_tokens < 0:
            raise ValueError(f"min_tokens must be an integer >= 0, got {self.min_tokens!r}")
        if self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens ({self.min_tokens}) must be at most max_tokens ({self.max_tokens})")
        for name in ("presence_penalty", "frequency_penalty"):
            v = getattr(self, name)
            if not _number(v) or not -2.0 <= v <= 2.0:
                raise ValueError(f"{name} must be a number in [-2, 2], got {v!r}")
        if not _number(self.repetition_penalty) or not 0 < self.repetition_penalty <= 10:
            raise ValueError(f"repetition_penalty must be a number in (0, 10], got {self.repetition_penalty!r}")
        if self.logprobs is not None and (not isinstance(self.logprobs, int) or isinstance(self.logprobs, bool)
                                          or not 0 <= self.logprobs <= self.MAX_LOGPROBS):
            raise ValueError(f"logprobs must be None or an integer in [0, {self.MAX_LOGPROBS}], got {self.logprobs!r}")
        if self.cache_salt is not None and (not isinstance(self.cache_salt, str) or not self.cache_salt
                                            or len(self.cache_salt) > self.MAX_CACHE_SALT_CHARS):
            raise ValueError(f"cache_salt must be None or a non-empty string of at most {self.MAX_CACHE_SALT_CHARS} "
                             f"characters, got {self.cache_salt!r:.80}")
        if self.prompt_logprobs is not None and (
                not isinstance(self.prompt_logprobs, int) or isinstance(self.prompt_logprobs, bool)
                or not 0 <= self.prompt_logprobs <= self.MAX_LOGPROBS):
            raise ValueError(f"prompt_logprobs must be None or an integer in [0, {self.MAX_LOGPROBS}], "
                             f"got {self.prompt_logprobs!r}")
        if not _number(self.min_p) or not 0 <= self.min_p <= 1:
            raise ValueError(f"min_p must be a number in [0, 1], got {self.min_p!r}")

    @property
    def penalized(self) -> bool:
        """Whether the logits change before picking (so an executor's precomputed argmax cannot be used)."""
        return (self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0
                or self.min_tokens > 0)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1

    @classmethod
    def from_dict(cls, d: dict) -> "SamplingParams":
        if not isinstance(d, dict):
            raise TypeError(f"sampling parameters must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown sampling parameter(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**d)
