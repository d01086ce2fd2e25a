"""OpenAI request bodies -> checked Calls: the prompts to send, their sampling parameters, how to answer.

Requests are checked here, before Triton sees them, so a bad one gets a 400 that names the field
and the limit. What is supported and what is refused is listed in docs/serving.md; the rule is that a
key we would have to drop silently (logit_bias, response_format, forced tool calls, suffix) is refused
by name, and a key that changes nothing here (HARMLESS) is accepted with a warning.
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from ...sampling_params import SamplingParams

log = logging.getLogger("hybridllm")

# Keys that change nothing here: accepted silently (the ones every client sends) ...
IGNORED = {"stream", "model", "stream_options", "user"}
# ... or with a warning (newer SDKs' and agent frameworks' keys; vLLM warns and ignores them too).
HARMLESS = {"metadata", "store", "service_tier", "parallel_tool_calls", "reasoning_effort", "reasoning",
            "include_reasoning", "verbosity", "safety_identifier", "prompt_cache_key", "modalities",
            "request_id", "priority", "documents", "return_tokens_as_token_ids"}
SAMPLING = ("temperature", "top_p", "seed", "stop", "presence_penalty", "frequency_penalty",
            # vLLM's extra sampling keys (aiperf, genai-perf and `vllm bench serve` send some of them)
            "top_k", "min_p", "min_tokens", "repetition_penalty", "ignore_eos", "stop_token_ids", "cache_salt")
COMMON = set(SAMPLING) | {"max_tokens", "logit_bias", "n", "logprobs", "prompt_logprobs"}
COMPLETION_KEYS = COMMON | {"prompt", "echo", "best_of", "suffix"}
CHAT_KEYS = COMMON | {"messages", "max_completion_tokens", "top_logprobs", "add_generation_prompt",
                      "tools", "tool_choice", "response_format"}
DEFAULT_MAX_TOKENS = {"completion": 16, "chat": 1024}   # OpenAI's completions default; chat: ours
ROLES = {"system", "developer", "user", "assistant", "tool"}


class APIError(Exception):
    """An OpenAI-style error: HTTP status, message, the offending parameter."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": None}}


@dataclass(frozen=True)
class Call:
    """One checked request: what to send to Triton (one request per prompt and choice) and how to answer."""
    kind: str                               # "completion" | "chat"
    prompts: tuple[str | tuple[int, ...], ...]   # text, or token ids when the frontend tokenized it
    sampling: dict                          # the sampling_parameters JSON every choice shares (seed aside)
    stream: bool
    include_usage: bool
    continuous_usage: bool                  # stream_options.continuous_usage_stats: usage on every chunk
    logprobs: int | None                    # top-k per position, None: no logprobs
    echo: bool                              # completions: the prompt (and its logprobs) in front
    n: int = 1                              # choices per prompt
    best_of: int = 1                        # generated per prompt, the n best kept (cumulative logprob)
    prompt_only: bool = False               # max_tokens=0: score the prompt, generate nothing
    prompt_logprobs: int | None = None      # vLLM's prompt_logprobs key: returned as choices[].prompt_logprobs
    texts: tuple[str | None, ...] = ()      # each prompt's text as given (None: given as token ids)

    @property
    def wants_prompt_logprobs(self) -> bool:
        return self.prompt_logprobs is not None or (self.echo and self.logprobs is not None)


def _bad(message: str, param: str) -> APIError:
    return APIError(400, f"{param}: {message}", param)


def _int(body: dict, key: str, default: int, lo: int, hi: int, limit: str = "") -> int:
    v = body.get(key)
    if v is None:
        return default
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise _bad(f"must be an integer in [{lo}, {hi}]{limit}, got {v!r}", key)
    return v


def parse_call(body, kind: str, render_chat=None, tokenize=None, max_n: int = 16) -> Call:
    """body: the JSON request. render_chat(messages, add_generation_prompt, tools) -> prompt text (chat);
    tokenize(text, add_special_tokens) -> token ids, or None when the frontend has no tokenizer (then text
    goes to Triton, which tokenizes it the same way with special tokens). max_n: the cap on n and best_of."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    allowed = COMPLETION_KEYS if kind == "completion" else CHAT_KEYS
    unknown = sorted(set(body) - allowed - IGNORED - HARMLESS)
    if unknown:
        raise _bad(f"unknown parameter(s) {', '.join(unknown)}", unknown[0])
    harmless = sorted(set(body) & HARMLESS)
    if harmless:
        log.warning("openai frontend: ignoring %s (they change nothing here)", ", ".join(harmless))
    if body.get("logit_bias"):
        raise _bad("is not supported", "logit_bias")
    if body.get("suffix"):
        raise _bad("is not supported", "suffix")
    if body.get("response_format") not in (None, {"type": "text"}):
        raise _bad("is not supported by this server (only {\"type\": \"text\"})", "response_format")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad(f"must be true or false, got {stream!r}", "stream")
    opts = body.get("stream_options") or {}
    if not isinstance(opts, dict):
        raise _bad("must be an object", "stream_options")
    limit = " (the cap is the model parameter max_n)"
    n = _int(body, "n", 1, 1, max_n, limit)
    best_of = _int(body, "best_of", n, 1, max_n, limit) if kind == "completion" else n
    if best_of < n:
        raise _bad(f"must be at least n ({n}), got {best_of}", "best_of")
    if best_of > n and stream:
        raise _bad("above n is not supported with stream=true", "best_of")
    prompt_lp = body.get("prompt_logprobs")
    echo = False
    if kind == "completion":
        prompts, texts = _prompts(body.get("prompt"), tokenize)
        logprobs = body.get("logprobs")
        echo = bool(body.get("echo"))
    else:
        tools = _tools(body)
        messages = _messages(body.get("messages"))
        text = render_chat(messages, bool(body.get("add_generation_prompt", True)), tools)
        # The template writes the special tokens (a BOS among them) itself: tokenize without adding more.
        ids = tokenize(text, False) if tokenize is not None else None
        prompts, texts = (tuple(ids) if ids is not None else text,), (text,)
        top = body.get("top_logprobs")
        logprobs = (top or 0) if body.get("logprobs") else None
        if top and not body.get("logprobs"):
            raise _bad("needs logprobs=true", "top_logprobs")
    for key, v in (("logprobs", logprobs), ("prompt_logprobs", prompt_lp)):
        if v is not None and (not isinstance(v, int) or isinstance(v, bool)
                              or not 0 <= v <= SamplingParams.MAX_LOGPROBS):
            raise _bad(f"must be an integer in [0, {SamplingParams.MAX_LOGPROBS}], got {v!r}", key)
    sampling = {k: body[k] for k in SAMPLING if body.get(k) is not None}
    max_tokens = body.get("max_completion_tokens") if kind == "chat" else None
    max_tokens = max_tokens if max_tokens is not None else body.get("max_tokens")
    max_tokens = DEFAULT_MAX_TOKENS[kind] if max_tokens is None else max_tokens
    prompt_only = kind == "completion" and max_tokens == 0 and type(max_tokens) is int
    sampling["max_tokens"] = 1 if prompt_only else max_tokens      # one token made, then dropped
    if logprobs is not None or best_of > n:
        sampling["logprobs"] = logprobs or 0                       # best_of ranks by cumulative logprob
    call = Call(kind, prompts, sampling, stream, bool(opts.get("include_usage")),
                bool(opts.get("continuous_usage_stats")), logprobs, echo, n, best_of, prompt_only, prompt_lp, texts)
    if call.wants_prompt_logprobs:
        sampling["prompt_logprobs"] = max(prompt_lp or 0, logprobs or 0)
    try:
        SamplingParams.from_dict(sampling)          # its messages name the key and the limit
    except (ValueError, TypeError) as e:
        field = str(e).split(" ", 1)[0]
        raise APIError(400, str(e), field if field in sampling else None) from None
    return call


def _prompts(prompt, tokenize):
    """completions' prompt: a string, a list of strings, a list of token ids or a list of those ->
    (what to send for each, each one's text or None)."""
    def is_ids(p):
        return isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p)
    if isinstance(prompt, str) or is_ids(prompt):
        prompt = [prompt]
    if not isinstance(prompt, list) or not prompt:
        raise _bad("must be a non-empty string, a list of token ids, or a non-empty list of either", "prompt")
    out, texts = [], []
    for i, p in enumerate(prompt):
        if is_ids(p):
            out.append(tuple(p))
            texts.append(None)
        elif isinstance(p, str) and p:
            ids = tokenize(p, True) if tokenize is not None else None
            out.append(tuple(ids) if ids is not None else p)
            texts.append(p)
        else:
            raise _bad("must be a non-empty string or a non-empty list of token ids", f"prompt[{i}]")
    return tuple(out), tuple(texts)


def _tools(body: dict) -> list | None:
    """Tools go to the chat template (as transformers passes them); making tool calls is not supported,
    so only tool_choice none or auto is accepted (the model's text comes back as it is)."""
    tools, choice = body.get("tools"), body.get("tool_choice")
    if choice not in (None, "none", "auto"):
        raise _bad(f"{choice!r} is not supported (only \"none\" or \"auto\": this server does not force tool calls)",
                   "tool_choice")
    if tools in (None, []):
        return None
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise _bad("must be a list of objects", "tools")
    return None if choice == "none" else tools


def _messages(messages) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise _bad("must be a non-empty list of {role, content} objects", "messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise _bad(f"must be an object with a role in {sorted(ROLES)}", f"messages[{i}]")
        content = m.get("content")
        if isinstance(content, list):       # [{type: text, text}] parts: only text is understood
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                raise _bad("only text content parts are supported", f"messages[{i}].content")
            m = dict(m, content="".join(p.get("text", "") for p in content))
        elif content is None and m["role"] == "assistant" and m.get("tool_calls"):
            pass                            # an assistant turn that called tools: content null, as OpenAI sends it
        elif not isinstance(content, str):
            raise _bad("must be a string or a list of text parts", f"messages[{i}].content")
        if m.get("tool_calls") is not None and not isinstance(m["tool_calls"], list):
            raise _bad("must be a list", f"messages[{i}].tool_calls")
        out.append(m)
    return out


def new_id(kind: str) -> str:
    return f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"
