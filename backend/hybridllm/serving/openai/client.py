"""A tritonclient gRPC streaming client for the hybrid_llm model (`hybridllm generate`).

Decoupled models answer over gRPC only through the bidirectional stream, so both stream=true
(a response per token) and stream=false (one response) use it.
"""
from __future__ import annotations

import json
import queue
import sys
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from ...sampling_params import SamplingParams
from ..launch.repository import MODEL_NAME


@dataclass(frozen=True)
class Chunk:
    """One response: new text and tokens (all of them when stream=false)."""
    text: str
    token_ids: tuple[int, ...]
    finish_reason: str | None       # set on the last chunk
    num_input_tokens: int
    # vllm_backend's rows, when the request asked: `logprobs` per token of this response ({token_id:
    # {logprob, rank, decoded_token}}, the token itself first), `prompt_logprobs` per prompt token (null first)
    logprobs: tuple = ()
    prompt_logprobs: tuple | None = None


class GenerateError(RuntimeError):
    def __init__(self, status: str, message: str):
        super().__init__(f"{status}: {message}")
        self.status, self.message = status, message


def raw_inputs(arrays: dict):
    """{name: numpy array} -> tritonclient gRPC inputs (the Triton dtype follows the array's)."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import np_to_triton_dtype

    inputs = []
    for name, arr in arrays.items():
        t = grpcclient.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
        t.set_data_from_numpy(arr)
        inputs.append(t)
    return inputs


def build_inputs(prompt: str | list[int], params: SamplingParams | dict | None, stream: bool,
                 exclude_input_in_output: bool | None = None):
    if isinstance(prompt, str):
        arrays = {"text_input": np.array([prompt.encode()], dtype=np.object_)}
    else:
        arrays = {"input_ids": np.asarray(prompt, dtype=np.int32)}
    arrays["stream"] = np.array([stream])
    if params is not None:
        d = params if isinstance(params, dict) else _params_dict(params)
        arrays["sampling_parameters"] = np.array([json.dumps(d).encode()], dtype=np.object_)
    if exclude_input_in_output is not None:
        arrays["exclude_input_in_output"] = np.array([exclude_input_in_output])
    return raw_inputs(arrays)


def _params_dict(p: SamplingParams) -> dict:
    d = {"max_tokens": p.max_tokens, "temperature": p.temperature, "top_p": p.top_p, "top_k": p.top_k,
         "stop": list(p.stop), "ignore_eos": p.ignore_eos}
    if p.seed is not None:
        d["seed"] = p.seed
    return d


def to_chunk(result) -> Chunk:
    def one(name):
        arr = result.as_numpy(name)
        return None if arr is None else arr.reshape(-1)
    text = one("text_output")
    ids = one("output_ids")
    reason = one("finish_reason")
    n_in = one("num_input_tokens")
    lp = one("logprobs")
    plp = one("prompt_logprobs")
    return Chunk(text[0].decode("utf-8") if text is not None and text.size else "",
                 tuple(int(t) for t in ids) if ids is not None else (),
                 (reason[0].decode() or None) if reason is not None and reason.size else None,
                 int(n_in[0]) if n_in is not None and n_in.size else 0,
                 tuple(json.loads(lp[0])) if lp is not None and lp.size else (),
                 tuple(json.loads(plp[0])) if plp is not None and plp.size else None)


def generate(url: str, prompt: str | list[int], params: SamplingParams | dict | None = None, *,
             stream: bool = True, model: str = MODEL_NAME, exclude_input_in_output: bool | None = None,
             timeout: float | None = 600.0) -> Iterator[Chunk]:
    """Yields chunks as the server sends them; raises GenerateError on an error response."""
    import tritonclient.grpc as grpcclient

    results: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(url)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    finished = False
    try:
        client.async_stream_infer(model, build_inputs(prompt, params, stream, exclude_input_in_output),
                                  enable_empty_final_response=True)
        while not finished:
            result, error = results.get(timeout=timeout)
            if error is not None:
                finished = True  # an error response is the request's last one
                raise GenerateError(str(error.status()), error.message())
            finished = result.get_response().parameters["triton_final_response"].bool_param
            chunk = to_chunk(result)
            if chunk.text or chunk.token_ids or chunk.finish_reason or chunk.prompt_logprobs:  # skip an empty final
                yield chunk
    finally:
        client.stop_stream(cancel_requests=not finished)  # stopping early cancels it on the server
        client.close()


def main_generate(args) -> int:
    """`hybridllm generate`: prints tokens as they arrive."""
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                            top_k=args.top_k, seed=args.seed, stop=tuple(args.stop or ()),
                            ignore_eos=args.ignore_eos)
    from tritonclient.utils import InferenceServerException

    out = sys.stdout
    out.write(args.prompt)  # like `hybridllm run`: the prompt, then the continuation as it comes
    out.flush()
    reason = None
    try:
        for chunk in generate(args.url, args.prompt, params, stream=args.stream, model=args.model_name,
                              exclude_input_in_output=True):
            out.write(chunk.text)
            out.flush()
            reason = chunk.finish_reason or reason
    except GenerateError as e:
        print(f"\nhybridllm generate: server error: {e}", file=sys.stderr)
        return 1
    except InferenceServerException as e:  # e.g. no server at --url
        print(f"\nhybridllm generate: cannot reach {args.url}: {e}", file=sys.stderr)
        return 1
    out.write(f"\n[finish_reason={reason}]\n")
    return 0
