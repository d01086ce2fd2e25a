"""OpenAI request bodies -> our sampling parameters, and our chunks -> OpenAI's response objects.

Requests are checked here, before Triton sees them, so a bad one gets a 400 that names the field
and the limit. Responses are the `openai` package's own pydantic models.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from ...sampling_params import SamplingParams

# Keys an OpenAI client may send that change nothing here: accepted and ignored.
IGNORED = {"user", "metadata", "store", "service_tier", "parallel_tool_calls", "stream_options", "stream", "model"}
COMMON = {"max_tokens", "temperature", "top_p", "seed", "stop", "presence_penalty", "frequency_penalty",
          "logit_bias", "n", "logprobs",
          # vLLM's extra sampling keys (aiperf and genai-perf send some of them)
          "top_k", "min_tokens", "repetition_penalty", "ignore_eos", "stop_token_ids", "cache_salt"}
COMPLETION_KEYS = COMMON | {"prompt", "echo", "best_of", "suffix"}
CHAT_KEYS = COMMON | {"messages", "max_completion_tokens", "top_logprobs", "add_generation_prompt",
                      "tools", "tool_choice", "response_format"}
DEFAULT_MAX_TOKENS = {"completion": 16, "chat": 1024}   # OpenAI's completions default; chat: ours


class APIError(Exception):
    """An OpenAI-style error: HTTP status, message, the offending parameter."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": None}}


@dataclass(frozen=True)
class Call:
    """One checked request: the prompt for Triton, its sampling parameters, and how to answer."""
    kind: str                        # "completion" | "chat"
    prompt: str | list[int]
    sampling: dict                   # the sampling_parameters JSON
    stream: bool
    include_usage: bool
    logprobs: int | None             # top-k per position, None: no logprobs
    echo: str                        # completions' echo=true: the prompt text to put in front


def _bad(message: str, param: str) -> APIError:
    return APIError(400, f"{param}: {message}", param)


def parse_call(body, kind: str, render_chat=None) -> Call:
    """body: the JSON request; render_chat(messages, add_generation_prompt) -> prompt text (chat only)."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    allowed = COMPLETION_KEYS if kind == "completion" else CHAT_KEYS
    unknown = sorted(set(body) - allowed - IGNORED)
    if unknown:
        raise _bad(f"unknown parameter(s) {', '.join(unknown)}", unknown[0])
    if body.get("n", 1) not in (1, None):
        raise _bad(f"{body['n']!r} is not supported; only 1 completion per request", "n")
    if body.get("best_of", 1) not in (1, None):
        raise _bad("only 1 is supported", "best_of")
    if body.get("logit_bias"):
        raise _bad("is not supported", "logit_bias")
    if body.get("suffix"):
        raise _bad("is not supported", "suffix")
    for key in ("tools", "response_format"):
        if body.get(key) not in (None, [], {"type": "text"}):
            raise _bad("is not supported by this server", key)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad(f"must be true or false, got {stream!r}", "stream")
    opts = body.get("stream_options") or {}
    if not isinstance(opts, dict):
        raise _bad("must be an object", "stream_options")
    echo = ""
    if kind == "completion":
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            prompt = list(prompt)
        elif not isinstance(prompt, str) or not prompt:
            raise _bad("must be a non-empty string or a list of token ids (one prompt per request)", "prompt")
        logprobs = body.get("logprobs")
        if body.get("echo"):
            if stream or not isinstance(prompt, str):
                raise _bad("is supported for a text prompt with stream=false only", "echo")
            echo = prompt
    else:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _bad("must be a non-empty list of {role, content} objects", "messages")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise _bad("must be an object with a string role", f"messages[{i}]")
            content = m.get("content")
            if isinstance(content, list):       # [{type: text, text}] parts: only text is understood
                if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                    raise _bad("only text content parts are supported", f"messages[{i}].content")
                m = dict(m, content="".join(p.get("text", "") for p in content))
                messages[i] = m
            elif not isinstance(content, str):
                raise _bad("must be a string or a list of text parts", f"messages[{i}].content")
        add = body.get("add_generation_prompt", True)
        prompt = render_chat(messages, bool(add))
        top = body.get("top_logprobs")
        logprobs = (top or 0) if body.get("logprobs") else None
        if top and not body.get("logprobs"):
            raise _bad("needs logprobs=true", "top_logprobs")
    if logprobs is not None and (not isinstance(logprobs, int) or isinstance(logprobs, bool)):
        raise _bad(f"must be an integer, got {logprobs!r}", "logprobs")
    sampling = {k: body[k] for k in ("temperature", "top_p", "seed", "stop", "presence_penalty", "frequency_penalty",
                                     "top_k", "min_tokens", "repetition_penalty", "ignore_eos", "stop_token_ids",
                                     "cache_salt")
                if body.get(k) is not None}
    max_tokens = body.get("max_completion_tokens") if kind == "chat" else None
    max_tokens = max_tokens if max_tokens is not None else body.get("max_tokens")
    sampling["max_tokens"] = DEFAULT_MAX_TOKENS[kind] if max_tokens is None else max_tokens
    if logprobs is not None:
        sampling["logprobs"] = logprobs
    try:
        SamplingParams.from_dict(sampling)          # its messages name the key and the limit
    except (ValueError, TypeError) as e:
        field = str(e).split(" ", 1)[0]
        raise APIError(400, str(e), field if field in sampling else None) from None
    return Call(kind, prompt, sampling, stream, bool(opts.get("include_usage")), logprobs, echo)


def new_id(kind: str) -> str:
    return f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int):
    from openai.types import CompletionUsage
    return CompletionUsage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                           total_tokens=prompt_tokens + completion_tokens)


def logprobs_object(kind: str, rows: list[dict], token_text, offset: int = 0):
    """Triton's logprobs JSON rows -> completions' Logprobs or chat's ChoiceLogprobs."""
    if kind == "completion":
        from openai.types.completion_choice import Logprobs
        tokens = [token_text(r["token_id"]) for r in rows]
        offsets, at = [], offset
        for t in tokens:
            offsets.append(at)
            at += len(t)
        return Logprobs(tokens=tokens, token_logprobs=[r["logprob"] for r in rows], text_offset=offsets,
                        top_logprobs=[{token_text(t): v for t, v in r["top_logprobs"]} for r in rows])
    from openai.types.chat import ChatCompletionTokenLogprob
    from openai.types.chat.chat_completion import ChoiceLogprobs
    from openai.types.chat.chat_completion_token_logprob import TopLogprob

    def entry(t, v):
        s = token_text(t)
        return dict(token=s, bytes=list(s.encode()), logprob=v)
    return ChoiceLogprobs(content=[ChatCompletionTokenLogprob(**entry(r["token_id"], r["logprob"]),
                                                              top_logprobs=[TopLogprob(**entry(t, v))
                                                                            for t, v in r["top_logprobs"]])
                                   for r in rows])


def completion(call: Call, rid: str, model: str, text: str, reason: str | None, n_in: int, n_out: int,
               logprobs=None):
    created = int(time.time())
    if call.kind == "completion":
        from openai.types import Completion, CompletionChoice
        return Completion(id=rid, object="text_completion", created=created, model=model,
                          choices=[CompletionChoice(index=0, text=call.echo + text, finish_reason=reason or "stop",
                                                    logprobs=logprobs)],
                          usage=usage(n_in, n_out))
    from openai.types.chat import ChatCompletion, ChatCompletionMessage
    from openai.types.chat.chat_completion import Choice
    return ChatCompletion(id=rid, object="chat.completion", created=created, model=model,
                          choices=[Choice(index=0, message=ChatCompletionMessage(role="assistant", content=text),
                                          finish_reason=reason or "stop", logprobs=logprobs)],
                          usage=usage(n_in, n_out))


def chunk(call: Call, rid: str, model: str, text: str | None, reason: str | None, logprobs=None, first=False,
          usage_=None):
    """One SSE event's object; text None with usage_ set: the final usage-only chunk."""
    created = int(time.time())
    if call.kind == "completion":
        from openai.types import Completion, CompletionChoice
        # model_construct: a chunk's finish_reason is null until the last one, which the final type forbids
        choices = [] if text is None else [CompletionChoice.model_construct(index=0, text=text, finish_reason=reason,
                                                                            logprobs=logprobs)]
        return Completion.model_construct(id=rid, object="text_completion", created=created, model=model,
                                          choices=choices, usage=usage_)
    from openai.types.chat import ChatCompletionChunk
    from openai.types.chat.chat_completion_chunk import Choice, ChoiceDelta
    choices = [] if text is None else [Choice(index=0, finish_reason=reason, logprobs=logprobs,
                                              delta=ChoiceDelta(role="assistant" if first else None, content=text))]
    return ChatCompletionChunk(id=rid, object="chat.completion.chunk", created=created, model=model,
                               choices=choices, usage=usage_)
