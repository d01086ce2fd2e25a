"""Triton inputs -> a validated GenerateRequest, and engine output -> Triton output arrays.

Pure numpy and dataclasses, no Triton import: `get` is any name -> array-or-None lookup, so unit
tests drive this without a server. Every error is a RequestError whose text names the input (or
sampling parameter) and the limit it broke; the adapter turns it into INVALID_ARG.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from typing import Callable

import numpy as np

from ...sampling_params import SamplingParams
from .options import ServingLimits

# vLLM keys that clients such as Triton's OpenAI frontend send and we do not implement. We accept them
# only at the value that changes nothing, so such clients work and nobody silently gets what they did
# not ask. (min_tokens, the penalties, logprobs and stop_token_ids are SamplingParams fields.)
NEUTRAL_KEYS = {"n": (1,), "best_of": (1, None), "top_logprobs": (None, 0), "logit_bias": (None, {})}
_FIELDS = {f.name: str(f.type) for f in fields(SamplingParams)}


class RequestError(ValueError):
    """A bad request; str() is "<field>: <what is wrong and the limit>"."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


def _over(field: str, what: str, cap: int, parameter: str) -> RequestError:
    return RequestError(field, f"{what}; the cap is {cap} (model parameter {parameter})")


@dataclass(frozen=True)
class GenerateRequest:
    prompt: str | None                          # exactly one of prompt / prompt_token_ids is set
    prompt_token_ids: tuple[int, ...] | None
    params: SamplingParams
    stream: bool
    prepend_input: bool                         # non-streaming answer starts with the prompt text


def _scalar(get: Callable, name: str):
    arr = get(name)
    if arr is None:
        return None
    arr = np.asarray(arr)
    if arr.size != 1:
        raise RequestError(name, f"expected exactly 1 element, got shape {list(arr.shape)}")
    return arr.reshape(-1)[0]


def _bool(get: Callable, name: str) -> bool | None:
    value = _scalar(get, name)
    if value is None:
        return None
    if isinstance(value, (bytes, str)):  # BYTES sent where BOOL was expected by a lax client
        raise RequestError(name, f"must be BOOL, got a string {value!r}")
    return bool(value)


def _text(value, name: str) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise RequestError(name, f"is not valid UTF-8 ({e.reason} at byte {e.start})") from None
    return str(value)


def _coerce(key: str, value):
    """vllm_backend's own client sends numbers as strings ("0.8"); accept that, typed by the field."""
    if not isinstance(value, str) or key == "stop":
        return value
    kind = _FIELDS.get(key, "")
    try:
        if kind.startswith("int"):
            return int(value)
        if kind.startswith("float"):
            return float(value)
        if kind.startswith("bool") and value.lower() in ("true", "false"):
            return value.lower() == "true"
    except ValueError:
        pass
    return value  # SamplingParams rejects it with a message naming the field


def parse_sampling(raw: str | bytes | dict | None, field: str = "sampling_parameters",
                   limits: ServingLimits | None = None) -> SamplingParams:
    if raw is None:
        return SamplingParams()
    if isinstance(raw, dict):
        obj = raw
    else:
        size = len(raw if isinstance(raw, bytes) else str(raw).encode())
        if limits is not None and size > limits.max_sampling_parameters_bytes:
            raise _over(field, f"is {size} bytes", limits.max_sampling_parameters_bytes,
                        "max_sampling_parameters_bytes")
        text = _text(raw, field)
        try:
            obj = json.loads(text) if text.strip() else {}
        except json.JSONDecodeError as e:
            raise RequestError(field, f"is not JSON ({e.msg} at char {e.pos})") from None
        except RecursionError:
            raise RequestError(field, "is nested too deeply to be sampling parameters") from None
    if not isinstance(obj, dict):
        raise RequestError(field, f"must be a JSON object, got {type(obj).__name__}")
    unknown = sorted(k for k in obj if k not in _FIELDS and k not in NEUTRAL_KEYS)
    if unknown:
        raise RequestError(field, f"unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_FIELDS))}")
    for key, allowed in NEUTRAL_KEYS.items():
        if key in obj and not any(obj[key] == a and type(obj[key]) is not str for a in allowed):
            shown = " or ".join(json.dumps(a) for a in allowed)
            raise RequestError(f"{field}.{key}", f"{obj[key]!r} is not supported; only {shown}")
    kwargs = {k: _coerce(k, v) for k, v in obj.items() if k in _FIELDS}
    if kwargs.get("logprobs") is False:             # vLLM clients' "off"
        kwargs["logprobs"] = None
    try:
        params = SamplingParams(**kwargs)
    except (ValueError, TypeError) as e:  # its messages name the key and the limit
        raise RequestError(field, str(e)) from None
    if limits is not None:
        n = len(params.stop) + len(params.stop_token_ids)
        if n > limits.max_stop:
            raise _over(f"{field}.stop", f"{n} stop strings and stop_token_ids", limits.max_stop, "max_stop")
        long = [s for s in params.stop if len(s) > limits.max_stop_length]
        if long:
            raise _over(f"{field}.stop", f"a stop string is {len(long[0])} characters", limits.max_stop_length,
                        "max_stop_length")
    return params


def parse_request(get: Callable[[str], object], limits: ServingLimits, parameters: str | None = None, *,
                  vocab_size: int) -> GenerateRequest:
    """vocab_size: the model's, for input_ids; limits: the model parameters' request caps."""
    """Validates one request. `parameters`: Triton request parameters (JSON), used like vllm_backend
    does when there is no sampling_parameters input (e.g. HTTP generate's top-level keys)."""
    text_arr = get("text_input")
    ids_arr = get("input_ids")
    prompt = ids = None
    if text_arr is not None and ids_arr is not None:
        raise RequestError("text_input", "give either text_input or input_ids, not both")
    if ids_arr is not None:
        flat = np.asarray(ids_arr).reshape(-1)
        if flat.size > limits.max_input_ids:
            raise _over("input_ids", f"has {flat.size} ids", limits.max_input_ids, "max_input_ids")
        if flat.size == 0:
            raise RequestError("input_ids", "is empty; give at least 1 token id")
        bad = flat[(flat < 0) | (flat >= vocab_size)]
        if bad.size:
            raise RequestError("input_ids", f"{int(bad[0])} is not a token id in [0, {vocab_size})")
        ids = tuple(int(t) for t in flat)
    elif text_arr is not None:
        raw_text = _scalar(lambda n: text_arr, "text_input")
        size = len(raw_text) if isinstance(raw_text, bytes) else len(str(raw_text).encode())
        if size > limits.max_text_input_bytes:
            raise _over("text_input", f"is {size} bytes", limits.max_text_input_bytes, "max_text_input_bytes")
        prompt = _text(raw_text, "text_input")
        if not prompt:
            raise RequestError("text_input", "is empty; give at least 1 character")
    else:
        raise RequestError("text_input", "is missing; give text_input (BYTES) or input_ids (INT32)")

    stream = bool(_bool(get, "stream"))
    exclude = _bool(get, "exclude_input_in_output")
    if stream and exclude is False:
        raise RequestError("exclude_input_in_output", "false is not allowed with stream=true")
    prepend = not stream and not exclude  # vllm_backend: the prompt is echoed unless excluded

    raw = _scalar(get, "sampling_parameters")
    if raw is not None:
        params = parse_sampling(raw, limits=limits)
    else:
        if parameters and len(parameters.encode()) > limits.max_sampling_parameters_bytes:
            raise _over("parameters", f"are {len(parameters.encode())} bytes", limits.max_sampling_parameters_bytes,
                        "max_sampling_parameters_bytes")
        extra = json.loads(parameters) if parameters else {}
        # triton_* keys are the frontends' own (e.g. triton_enable_empty_final_response).
        extra = {k: v for k, v in extra.items() if not k.startswith("triton_")}
        params = parse_sampling(extra or None, field="parameters", limits=limits)
    if (_bool(get, "return_logprobs") or _bool(get, "return_cumulative_logprob")) and params.logprobs is None:
        params = dataclasses.replace(params, logprobs=0)          # the chosen tokens' logprobs
    if not stream and params.max_tokens > limits.max_tokens_non_stream:
        raise RequestError(
            "sampling_parameters.max_tokens",
            f"{params.max_tokens} is over the cap of {limits.max_tokens_non_stream} for stream=false "
            "(model parameter max_tokens_non_stream); lower it or set stream=true")
    return GenerateRequest(prompt, ids, params, stream, prepend)


def logprob_rows(entries, decode) -> list[dict]:
    """engine TokenLogprob per position -> vllm_backend's rows: {token_id: {logprob, rank, decoded_token}},
    the position's own token first, then its top-k alternatives (by rank). decode: token id -> text."""
    rows = []
    for lp in entries:
        row = {str(lp.token_id): {"logprob": lp.logprob, "rank": lp.rank, "decoded_token": decode(lp.token_id)}}
        for rank, (t, v) in enumerate(lp.top, 1):
            row.setdefault(str(t), {"logprob": v, "rank": rank, "decoded_token": decode(t)})
        rows.append(row)
    return rows


def output_arrays(text: str, token_ids, finish_reason: str | None, num_input_tokens: int,
                  logprobs=None, cumulative_logprob: float | None = None, *, prompt_logprobs=None,
                  decode=str) -> dict[str, np.ndarray]:
    """One response's outputs, named and typed as the Triton I/O contract (vllm_backend's names).
    logprobs (engine TokenLogprob per token of this response) and cumulative_logprob: when asked for;
    prompt_logprobs: TokenLogprob per prompt token after the first (null stands for the first)."""
    ids = np.asarray(token_ids, dtype=np.int32).reshape(-1)   # [n]
    extra = {}
    if logprobs is not None:
        rows = logprob_rows(logprobs, decode)
        extra["logprobs"] = np.array([json.dumps(rows).encode()], dtype=np.object_)        # [1] JSON
        extra["cumulative_logprob"] = np.array([cumulative_logprob], dtype=np.float32)     # [1]
    if prompt_logprobs is not None:
        rows = [None] + logprob_rows(prompt_logprobs, decode)
        extra["prompt_logprobs"] = np.array([json.dumps(rows).encode()], dtype=np.object_)  # [1] JSON
    return extra | {
        "text_output": np.array([text.encode("utf-8")], dtype=np.object_),   # [1]
        "output_ids": ids,
        "finish_reason": np.array([(finish_reason or "").encode()], dtype=np.object_),  # "" until the end
        "num_input_tokens": np.array([num_input_tokens], dtype=np.uint32),
        "num_output_tokens": np.array([ids.size], dtype=np.uint32),  # tokens in this response
    }
