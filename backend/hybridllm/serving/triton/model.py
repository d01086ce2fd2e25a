"""TritonPythonModel: the thin adapter between Triton's Python backend and the engine loop.

`execute` validates each request, hands it to the EngineLoop and returns at once (decoupled
model); the loop's outbox thread sends the responses through each request's response sender. Every
request gets exactly one response with the FINAL flag: the last token, or an error.
"""
from __future__ import annotations

import functools
import importlib
import itertools
import json
import logging

from .engine_loop import CANCELLED, INTERNAL, INVALID, UNAVAILABLE, EngineLoop, Submission
from ..launch.instances import apply_share, cpu_share
from .options import parse_parameters
from .request_io import GenerateRequest, RequestError, output_arrays, parse_request

log = logging.getLogger("hybridllm.serving")


def _pb_utils():
    # Imported when Triton loads the model, not at import time, so unit tests can put a fake
    # module in sys.modules and the package imports fine where the backend is not installed.
    return importlib.import_module("triton_python_backend_utils")


class _TritonLogHandler(logging.Handler):
    """Sends our log records to Triton's log, so they appear with the server's, in order."""

    def __init__(self, pb):
        super().__init__()
        self._logger = pb.Logger

    def emit(self, record):
        msg = self.format(record)
        if record.levelno >= logging.ERROR:
            self._logger.log_error(msg)
        elif record.levelno >= logging.WARNING:
            self._logger.log_warn(msg)
        else:
            self._logger.log_info(msg)


class TritonSink:
    """Turns one request's engine outputs into Triton responses (an engine_loop.Sink)."""

    def __init__(self, pb, sender, wanted: set[str], req: GenerateRequest, prompt_text: str, decode=str):
        self._pb = pb
        self._decode = decode                   # token id -> text, for the logprobs' decoded_token
        self._prompt_sent = False
        self._sender = sender
        self._req = req
        self._prompt_text = prompt_text
        # The backend drops outputs the client did not ask for; skip building them at all.
        self._wanted = wanted
        self._codes = {INVALID: pb.TritonError.INVALID_ARG, CANCELLED: pb.TritonError.CANCELLED,
                       INTERNAL: pb.TritonError.INTERNAL, UNAVAILABLE: pb.TritonError.UNAVAILABLE}

    def output(self, out) -> None:
        n_in = out.num_prompt_tokens
        asked = self._req.params.logprobs is not None
        # Prompt logprobs ride on the first response only (stream=false: the one response).
        prompt = out.prompt_logprobs if not self._prompt_sent else None
        if self._req.stream:
            arrays = output_arrays(out.delta_text, out.delta_token_ids, out.finish_reason, n_in,
                                   out.delta_logprobs if asked else None, out.cumulative_logprob,
                                   prompt_logprobs=prompt, decode=self._decode)
        elif out.finished:
            text = (self._prompt_text if self._req.prepend_input else "") + out.text
            arrays = output_arrays(text, out.token_ids, out.finish_reason, n_in, out.logprobs if asked else None,
                                   out.cumulative_logprob, prompt_logprobs=prompt, decode=self._decode)
        else:
            return  # stream=false: one response, at the end
        self._prompt_sent = self._prompt_sent or prompt is not None
        pb = self._pb
        tensors = [pb.Tensor(name, arr) for name, arr in arrays.items() if not self._wanted or name in self._wanted]
        flags = pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL if out.finished else 0
        self._sender.send(pb.InferenceResponse(output_tensors=tensors), flags=flags)

    def fail(self, kind: str, message: str) -> None:
        pb = self._pb
        error = pb.TritonError(message, self._codes.get(kind, pb.TritonError.INTERNAL))
        self._sender.send(pb.InferenceResponse(error=error), flags=pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def is_cancelled(self) -> bool:
        return self._sender.is_cancelled()


class TritonPythonModel:
    def initialize(self, args):
        pb = self.pb = _pb_utils()
        model_config = json.loads(args["model_config"])
        if not pb.using_decoupled_model_transaction_policy(model_config):
            raise ValueError("hybrid_llm streams tokens: set model_transaction_policy { decoupled: true }")
        config, limits = parse_parameters(model_config.get("parameters", {}))
        self._handler = _TritonLogHandler(pb)
        logging.getLogger("hybridllm").addHandler(self._handler)
        logging.getLogger("hybridllm").setLevel(logging.INFO)

        # instance_group count > 1: one stub process, engine and KV per instance; they share the CPU.
        share = cpu_share(_instance_count(model_config), args.get("model_instance_name", ""))
        config = apply_share(config, share)
        self.metrics = None
        try:
            from .metrics import ServingMetrics
            # `instance`: with count > 1 each instance writes its own series, not one shared gauge.
            self.metrics = ServingMetrics(pb, {"model": args["model_name"], "version": args["model_version"],
                                               "instance": args.get("model_instance_name", "")})
        except pb.TritonModelException as e:  # the server runs with --allow-metrics=false
            log.warning("custom metrics disabled: %s", e)

        from ...engine import LLMEngine  # torch-heavy; only once Triton loads us
        # Built on the loop's thread, so this (Triton's) thread never runs torch: see EngineLoop.

        def make_engine():
            if share.threads:  # on the loop thread, before the engine reads torch's thread count
                import torch
                torch.set_num_threads(share.threads)
            return LLMEngine(config)
        self.loop = EngineLoop(make_engine, self.metrics, stall_timeout_s=limits.engine_stall_timeout_s,
                               fault_injection=limits.fault_injection).start()
        self.engine = self.loop.engine
        self.limits = limits
        self.vocab_size = self.engine.model_config.vocab_size
        tokenizer = self.engine.tokenizer
        # The logprobs' decoded_token (vllm_backend's): one token's text, cached per id.
        self._decode = functools.lru_cache(maxsize=1 << 16)(
            lambda t: tokenizer.decode([t], skip_special_tokens=False))
        self._ids = itertools.count()

    def execute(self, requests):
        pb = self.pb
        for request in requests:
            sender = request.get_response_sender()
            try:
                req = parse_request(lambda name: _input(pb, request, name), self.limits, request.parameters(),
                                    vocab_size=self.vocab_size)
                prompt_text = req.prompt if req.prompt is not None else \
                    (self.engine.tokenizer.decode(list(req.prompt_token_ids)) if req.prepend_input else "")
                sink = TritonSink(pb, sender, set(request.requested_output_names() or ()), req, prompt_text,
                                  self._decode)
            except RequestError as e:
                _send_error(pb, sender, str(e), pb.TritonError.INVALID_ARG)
                continue
            except Exception as e:  # never leave a request without its FINAL response
                log.exception("could not accept a request")
                _send_error(pb, sender, f"{type(e).__name__}: {e}", pb.TritonError.INTERNAL)
                continue
            # Our own ids: the client's request_id is optional and need not be unique.
            rid = f"{request.request_id() or 'req'}#{next(self._ids)}"
            self.loop.submit(Submission(rid, req.prompt, req.prompt_token_ids, req.params, sink))
        return None  # decoupled: responses go through the senders

    def is_ready(self) -> bool:
        # Called by Python backends that support a user readiness check (newer than 24.10; 2.51 never
        # calls it, hence the engine health metrics that the OpenAI frontend's /health reads).
        return self.loop.health() is None

    def finalize(self):
        self.loop.shutdown()
        if self.metrics is not None:
            self.metrics.close()
        logging.getLogger("hybridllm").removeHandler(self._handler)


def _instance_count(model_config: dict) -> int:
    return sum(int(g.get("count", 1)) for g in model_config.get("instance_group", [])) or 1


def _input(pb, request, name: str):
    tensor = pb.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def _send_error(pb, sender, message: str, code) -> None:
    sender.send(pb.InferenceResponse(error=pb.TritonError(message, code)),
                flags=pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
