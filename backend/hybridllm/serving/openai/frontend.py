"""An OpenAI-compatible HTTP frontend in front of Triton (`hybridllm serve --openai-port`, `hybridllm openai`).

FastAPI on uvicorn: the ASGI stack the openai client ecosystem (vLLM's server, Triton's own OpenAI
frontend) is built and tested on, and its request objects tell us when a client has gone. Every call
becomes one request on Triton's gRPC stream (tritonclient's asyncio client), always streamed token by
token from Triton, so a client that disconnects, streaming or not, cancels its Triton request and
the engine frees its KV blocks. It works in front of any Triton serving our model, Docker included.

Endpoints: GET /v1/models, POST /v1/completions, POST /v1/chat/completions (both with stream=true as
SSE ending in `data: [DONE]`), GET /health (200 when Triton says the model is ready and, given
Triton's metrics URL, every engine instance's health gauges say ready and fresh; else 503 with why).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from fastapi import Request     # at module level: FastAPI resolves the routes' annotations here

from .client import build_inputs, to_chunk
from .protocol import APIError, Call, chunk, completion, logprobs_object, new_id, parse_call, usage
from ..launch.repository import MODEL_NAME

log = logging.getLogger("hybridllm")


class TritonBridge:
    """One asyncio gRPC client to Triton; generate() yields Triton's per-token responses."""

    def __init__(self, url: str, model: str = MODEL_NAME):
        self.url, self.model = url, model
        self._client = None

    @property
    def client(self):
        # Made on first use, inside the server's event loop: a grpc.aio channel belongs to the loop it
        # was created in.
        if self._client is None:
            import tritonclient.grpc.aio as grpcclient
            self._client = grpcclient.InferenceServerClient(self.url)
        return self._client

    async def ready(self) -> bool:
        try:
            return await self.client.is_model_ready(self.model)
        except Exception:  # noqa: BLE001 - no server, or it is shutting down
            return False

    async def generate(self, call: Call, is_disconnected):
        """Yields client.Chunk per Triton response; raises APIError.
        is_disconnected: async () -> bool, polled between responses; a gone client cancels the request."""
        inputs = build_inputs(call.prompt, call.sampling, stream=True)

        async def requests():
            yield {"model_name": self.model, "inputs": inputs, "enable_empty_final_response": True}
        stream = self.client.stream_infer(requests())
        done = False
        try:
            async for result, error in stream:
                if error is not None:
                    done = True
                    raise _triton_error(error.message())
                final = result.get_response().parameters["triton_final_response"].bool_param
                out = to_chunk(result)
                if out.text or out.token_ids or out.finish_reason:
                    yield out
                if final:
                    done = True
                    return
                if await is_disconnected():
                    log.info("openai frontend: client gone, cancelling its request")
                    return
        finally:
            if not done:
                stream.cancel()                     # Triton cancels the request; the engine frees its blocks


ENGINE_READY, HEARTBEAT, STALL_TIMEOUT = ("hybridllm_engine_ready", "hybridllm_engine_heartbeat_seconds",
                                          "hybridllm_engine_stall_timeout_seconds")


def engine_health(metrics_text: str, model: str, now: float) -> str | None:
    """Reads our engine health gauges from Triton's /metrics text: None when every instance of `model`
    is ready and its heartbeat is younger than its stall timeout, else why not. Triton 2.51 never asks
    the model's is_ready, so this is how a dead or stuck engine fails a readiness probe."""
    import re
    per: dict[str, dict[str, float]] = {}
    for line in metrics_text.splitlines():
        m = re.match(r'^(hybridllm_engine_\w+)\{([^}]*)\}\s+(\S+)$', line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
        if labels.get("model") == model:
            per.setdefault(labels.get("instance", ""), {})[m.group(1)] = float(m.group(3))
    if not per:
        return f"no engine health metrics for model {model!r}"
    for instance, values in sorted(per.items()):
        if values.get(ENGINE_READY) != 1.0:
            return f"engine {instance or model} is not ready"
        age, limit = now - values.get(HEARTBEAT, 0.0), values.get(STALL_TIMEOUT, 0.0)
        if age > limit + 2.0:  # the watchdog writes once a second; a frozen process stops writing
            return f"engine {instance or model}: no heartbeat for {age:.0f} s (stall timeout {limit:g} s)"
    return None


def _triton_error(message: str) -> APIError:
    # Our backend's bad-input messages start with the input they name (serving/triton/request_io.py).
    if message.startswith(("text_input", "input_ids", "sampling_parameters", "parameters")):
        return APIError(400, message)
    if "not ready" in message or "unavailable" in message.lower() or "failed to connect" in message.lower():
        return APIError(503, f"the model is not ready: {message}", kind="server_error")
    return APIError(500, message, kind="server_error")


def build_app(triton_url: str, model_folder: str | Path | None, served_model_name: str = MODEL_NAME,
              triton_model: str = MODEL_NAME, metrics_url: str | None = None):
    """The FastAPI app. model_folder: where the chat template and tokenizer come from (None: none,
    so /v1/chat/completions answers 400 and logprobs show token ids). metrics_url: Triton's /metrics,
    whose engine health gauges /health checks too (None: model readiness only)."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, StreamingResponse

    from .chat_template import ChatTemplate, NoChatTemplate

    app = FastAPI(title="hybridllm OpenAI-compatible API")
    bridge = TritonBridge(triton_url, triton_model)
    template, template_error, tokenizer = None, "no model folder was given to the frontend", None
    if model_folder is not None:
        try:
            template = ChatTemplate.from_folder(model_folder)
        except NoChatTemplate as e:
            template_error = str(e)
        from tokenizers import Tokenizer
        tokenizer = Tokenizer.from_file(str(Path(model_folder) / "tokenizer.json"))
    created = int(time.time())

    def token_text(t: int) -> str:
        return tokenizer.decode([t], skip_special_tokens=False) if tokenizer is not None else f"<{t}>"

    def render_chat(messages, add_generation_prompt):
        if template is None:
            raise APIError(400, f"messages: {template_error}", "messages")
        try:
            return template.render(messages, add_generation_prompt)
        except ValueError as e:
            raise APIError(400, str(e), "messages") from None

    @app.exception_handler(APIError)
    async def _api_error(request, e: APIError):
        return JSONResponse(e.body(), status_code=e.status)

    async def engine_problem() -> str | None:
        if metrics_url is None:
            return None
        import asyncio
        import urllib.request

        def scrape() -> str:
            with urllib.request.urlopen(metrics_url, timeout=5) as r:
                return r.read().decode()
        try:
            text = await asyncio.to_thread(scrape)
        except OSError as e:
            return f"Triton metrics unreachable at {metrics_url}: {e}"
        return engine_health(text, triton_model, time.time())

    @app.get("/health")
    async def health():
        if not await bridge.ready():
            return JSONResponse({"status": "not ready", "reason": "Triton reports the model not ready"},
                                status_code=503)
        problem = await engine_problem()
        if problem is not None:
            return JSONResponse({"status": "not ready", "reason": problem}, status_code=503)
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": served_model_name, "object": "model", "created": created,
                                            "owned_by": "hybridllm"}]}

    async def run(request: Request, kind: str):
        try:
            body = await request.json()
        except ValueError:
            raise APIError(400, "the request body is not JSON") from None
        if isinstance(body, dict) and body.get("model") not in (None, served_model_name):
            raise APIError(404, f"model: {body.get('model')!r} does not exist; this server serves "
                                f"{served_model_name!r} (GET /v1/models)", "model", "not_found_error")
        call = parse_call(body, kind, render_chat)
        if not await bridge.ready():
            raise APIError(503, "the model is not ready yet", kind="server_error")
        rid = new_id(kind)
        pieces = bridge.generate(call, request.is_disconnected)
        if call.stream:
            # The first response before the 200: a request Triton refuses gets its error status.
            first = await anext(pieces, None)
            return StreamingResponse(_sse(call, rid, first, pieces, served_model_name, token_text),
                                     media_type="text/event-stream")
        text, n_in, n_out, reason, rows = "", 0, 0, None, []
        async for p in pieces:
            text += p.text
            n_in = p.num_input_tokens or n_in
            n_out += len(p.token_ids)
            reason = p.finish_reason or reason
            rows += p.logprobs
        lp = logprobs_object(kind, rows, token_text, len(call.echo)) if call.logprobs is not None else None
        return completion(call, rid, served_model_name, text, reason, n_in, n_out, lp).model_dump(exclude_none=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await run(request, "completion")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await run(request, "chat")

    return app


async def _sse(call: Call, rid: str, first_piece, pieces, model: str, token_text):
    def event(obj) -> str:
        return f"data: {json.dumps(obj.model_dump() if hasattr(obj, 'model_dump') else obj)}\n\n"
    n_in = n_out = 0
    first, offset = True, 0
    async def all_pieces():
        if first_piece is not None:
            yield first_piece
            async for p in pieces:
                yield p
    try:
        async for p in all_pieces():
            n_in = p.num_input_tokens or n_in
            n_out += len(p.token_ids)
            lp = None
            if call.logprobs is not None and p.logprobs:
                lp = logprobs_object(call.kind, list(p.logprobs), token_text, offset).model_dump()
            offset += len(p.text)
            yield event(chunk(call, rid, model, p.text, p.finish_reason, lp, first))
            first = False
        if call.include_usage:
            yield event(chunk(call, rid, model, None, None, usage_=usage(n_in, n_out)))
    except APIError as e:                   # an error mid-stream: an error event, then the end
        yield event(e.body())
    yield "data: [DONE]\n\n"


def run_frontend(triton_url: str, model_folder, *, host: str = "127.0.0.1", port: int = 9000,
                 served_model_name: str = MODEL_NAME, metrics_url: str | None = None,
                 triton_model: str = MODEL_NAME):
    """A uvicorn Server (not started): server.run() blocks; server.should_exit = True stops it."""
    import uvicorn
    app = build_app(triton_url, model_folder, served_model_name, triton_model, metrics_url=metrics_url)
    return uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off"))
