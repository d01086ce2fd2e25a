"""Our per-choice results -> OpenAI's response objects (the `openai` package's own pydantic models).

Logprob rows arrive in vllm_backend's format ({token_id: {logprob, rank, decoded_token}} per position,
the position's own token first, then its top-k by rank); this module turns them into completions'
`Logprobs` (tokens, token_logprobs, top_logprobs, text_offset; with echo over prompt + completion, the
prompt's first token having None) and chat's `ChoiceLogprobs`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from .protocol import Call


@dataclass
class Choice:
    """One choice as it accumulates from Triton's responses."""
    index: int                      # in choices[]
    prompt_index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[dict] = field(default_factory=list)          # vllm_backend rows, one per output token
    prompt_logprobs: list | None = None                          # [None, row, ...] per prompt token
    finish_reason: str | None = None
    num_input_tokens: int = 0

    @property
    def cumulative_logprob(self) -> float:
        return sum(_position(r, 0)[1] for r in self.logprobs)


def _position(row: dict, k: int):
    """A row -> (token id, its logprob, its text, top k [(id, logprob, text)] by rank)."""
    items = list(row.items())
    tid, own = items[0]
    top = sorted(items, key=lambda kv: kv[1]["rank"])[:k]
    return int(tid), own["logprob"], own["decoded_token"], [(int(t), v["logprob"], v["decoded_token"]) for t, v in top]


def usage(prompt_tokens: int, completion_tokens: int):
    from openai.types import CompletionUsage
    return CompletionUsage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                           total_tokens=prompt_tokens + completion_tokens)


def completion_logprobs(rows: list[dict], k: int, offset: int = 0, first_text: str | None = None):
    """completions' Logprobs over rows; first_text: a leading position with no logprob (the prompt's first
    token under echo). text_offset counts characters from `offset`."""
    from openai.types.completion_choice import Logprobs
    tokens, lps, tops = [], [], []
    if first_text is not None:
        tokens.append(first_text)
        lps.append(None)
        tops.append(None)
    for r in rows:
        _, lp, text, top = _position(r, k)
        tokens.append(text)
        lps.append(lp)
        tops.append({t: v for _, v, t in top})
    offsets, at = [], offset
    for t in tokens:
        offsets.append(at)
        at += len(t)
    # model_construct: the prompt's first token has None, which OpenAI's type does not allow (vLLM sends it too)
    return Logprobs.model_construct(tokens=tokens, token_logprobs=lps, text_offset=offsets, top_logprobs=tops)


def chat_logprobs(rows: list[dict], k: int):
    from openai.types.chat import ChatCompletionTokenLogprob
    from openai.types.chat.chat_completion import ChoiceLogprobs
    from openai.types.chat.chat_completion_token_logprob import TopLogprob

    def entry(text, v):
        return dict(token=text, bytes=list(text.encode()), logprob=v)
    content = []
    for r in rows:
        _, lp, text, top = _position(r, k)
        content.append(ChatCompletionTokenLogprob(**entry(text, lp), top_logprobs=[TopLogprob(**entry(t, v))
                                                                                  for _, v, t in top]))
    return ChoiceLogprobs(content=content)


def choice_logprobs(call: Call, c: Choice, echo_text: str, first_token_text: str | None, rows: list[dict]):
    """The logprobs object of a choice's (or a streamed piece's) rows; under echo the prompt's rows lead."""
    if call.logprobs is None:
        return None
    if call.kind == "chat":
        return chat_logprobs(rows, call.logprobs)
    if call.echo and c.prompt_logprobs is not None:
        return completion_logprobs(list(c.prompt_logprobs[1:]) + rows, call.logprobs, 0, first_token_text)
    return completion_logprobs(rows, call.logprobs, len(echo_text) if call.echo else 0)


def completion(call: Call, rid: str, model: str, choices: list[tuple[Choice, str, object]], n_in: int, n_out: int):
    """choices: (choice, its text with any echo, its logprobs object)."""
    created = int(time.time())
    if call.kind == "completion":
        from openai.types import Completion, CompletionChoice
        out = []
        for c, text, lp in choices:
            extra = {"prompt_logprobs": c.prompt_logprobs} if call.prompt_logprobs is not None else {}
            out.append(CompletionChoice(index=c.index, text=text, finish_reason=c.finish_reason or "stop",
                                        logprobs=lp, **extra))
        return Completion(id=rid, object="text_completion", created=created, model=model, choices=out,
                          usage=usage(n_in, n_out))
    from openai.types.chat import ChatCompletion, ChatCompletionMessage
    from openai.types.chat.chat_completion import Choice as ChatChoice
    # vLLM puts chat's prompt_logprobs on the response (one prompt per chat call)
    extra = {"prompt_logprobs": choices[0][0].prompt_logprobs} if call.prompt_logprobs is not None and choices else {}
    return ChatCompletion(id=rid, object="chat.completion", created=created, model=model, **extra,
                          choices=[ChatChoice(index=c.index, finish_reason=c.finish_reason or "stop", logprobs=lp,
                                              message=ChatCompletionMessage(role="assistant", content=text))
                                   for c, text, lp in choices],
                          usage=usage(n_in, n_out))


def chunk(call: Call, rid: str, model: str, index: int | None, text: str | None, reason: str | None, logprobs=None,
          first=False, usage_=None, prompt_logprobs=None):
    """One SSE event's object; index None: the usage-only chunk after the last choice ends."""
    created = int(time.time())
    if call.kind == "completion":
        from openai.types import Completion, CompletionChoice
        extra = {"prompt_logprobs": prompt_logprobs} if prompt_logprobs is not None else {}
        # model_construct: a chunk's finish_reason is null until the last one, which the final type forbids
        choices = [] if index is None else [CompletionChoice.model_construct(
            index=index, text=text, finish_reason=reason, logprobs=logprobs, **extra)]
        return Completion.model_construct(id=rid, object="text_completion", created=created, model=model,
                                          choices=choices, usage=usage_)
    from openai.types.chat import ChatCompletionChunk
    from openai.types.chat.chat_completion_chunk import Choice as ChunkChoice, ChoiceDelta
    choices = [] if index is None else [ChunkChoice(index=index, finish_reason=reason, logprobs=logprobs,
                                                    delta=ChoiceDelta(role="assistant" if first else None,
                                                                      content=text))]
    return ChatCompletionChunk(id=rid, object="chat.completion.chunk", created=created, model=model,
                               choices=choices, usage=usage_)
