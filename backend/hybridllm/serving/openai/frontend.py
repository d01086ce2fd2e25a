"""An OpenAI-compatible HTTP frontend in front of Triton (`hybridllm serve --openai-port`, `hybridllm openai`).

FastAPI on uvicorn: the ASGI stack the openai client ecosystem (vLLM's server, Triton's own OpenAI
frontend) is built and tested on, and its request objects tell us when a client has gone. Every prompt
and choice of a call becomes one request on Triton's gRPC stream (tritonclient's asyncio client, fanout.py),
always streamed token by token from Triton, so a client that disconnects, streaming or not, cancels its
Triton requests and the engine frees their KV blocks. It works in front of any Triton serving our model.

Endpoints: GET /v1/models and /v1/models/{id}, POST /v1/completions and /v1/chat/completions (both with
stream=true as SSE ending in `data: [DONE]`), vLLM's POST /tokenize, POST /detokenize and GET
/tokenizer_info, GET /health (200 when Triton says the model is ready and, given Triton's metrics URL,
every engine instance's health gauges say ready and fresh; else 503 with why). What each accepts and
refuses: docs/serving.md.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from fastapi import Request     # at module level: FastAPI resolves the routes' annotations here

from .client import build_inputs, to_chunk
from .fanout import Fanout
from .protocol import APIError, Call, new_id, parse_call
from .responses import Choice, choice_logprobs, chunk, completion, usage
from .tokenizer_api import ModelTokenizer, add_tokenizer_routes
from ..launch.repository import MODEL_NAME

log = logging.getLogger("hybridllm")
DEFAULT_MAX_N = 16


class TritonBridge:
    """One asyncio gRPC client to Triton; generate() yields Triton's per-token responses."""

    def __init__(self, url: str, model: str = MODEL_NAME):
        self.url, self.model = url, model
        self._client = None
        self._parameters: dict[str, str] | None = None

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

    async def parameters(self) -> dict[str, str]:
        """The model's parameters (config.pbtxt), read once: max_n, max_model_len."""
        if self._parameters is None:
            try:
                cfg = await self.client.get_model_config(self.model, as_json=True)
            except Exception:  # noqa: BLE001 - not up yet: defaults now, asked again next time
                return {}
            params = cfg.get("config", cfg).get("parameters", {})
            self._parameters = {k: v.get("string_value", "") for k, v in params.items()}
        return self._parameters

    async def generate(self, prompt, sampling: dict, is_disconnected):
        """Yields client.Chunk per Triton response; raises APIError.
        is_disconnected: async () -> bool, polled between responses; a gone client cancels the request."""
        inputs = build_inputs(list(prompt) if isinstance(prompt, tuple) else prompt, sampling, stream=True)

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
                if out.text or out.token_ids or out.finish_reason or out.prompt_logprobs:
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
    """The FastAPI app. model_folder: where the chat template and tokenizer come from (None: none, so
    /v1/chat/completions, the tokenizer endpoints and echo of token ids answer 400). metrics_url:
    Triton's /metrics, whose engine health gauges /health checks too (None: model readiness only)."""
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
        tokenizer = ModelTokenizer(model_folder)
    created = int(time.time())

    def render_chat(messages, add_generation_prompt, tools=None):
        if template is None:
            raise APIError(400, f"messages: {template_error}", "messages")
        try:
            return template.render(messages, add_generation_prompt, tools)
        except ValueError as e:
            raise APIError(400, str(e), "messages") from None

    async def max_model_len() -> int | None:
        given = (await bridge.parameters()).get("max_model_len", "")
        if given.strip().isdigit():
            return int(given)
        return tokenizer.max_position_embeddings if tokenizer is not None else None

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

    async def model_card() -> dict:
        # root and max_model_len: `vllm bench serve` without --model reads them
        return {"id": served_model_name, "object": "model", "created": created, "owned_by": "hybridllm",
                "root": str(model_folder) if model_folder is not None else served_model_name, "parent": None,
                "max_model_len": await max_model_len()}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [await model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str):
        if model_id != served_model_name:
            raise APIError(404, f"model: {model_id!r} does not exist; this server serves {served_model_name!r}",
                           "model", "not_found_error")
        return await model_card()

    add_tokenizer_routes(app, tokenizer, render_chat, max_model_len)

    def echo_texts(call: Call) -> list[str]:
        out = []
        for prompt, text in zip(call.prompts, call.texts):
            if text is None and tokenizer is None:
                raise APIError(400, "echo: needs the model folder's tokenizer for token-id prompts", "echo")
            out.append(text if text is not None else tokenizer.decode(prompt))
        return out

    async def run(request: Request, kind: str):
        try:
            body = await request.json()
        except ValueError:
            raise APIError(400, "the request body is not JSON") from None
        if isinstance(body, dict) and body.get("model") not in (None, served_model_name):
            raise APIError(404, f"model: {body.get('model')!r} does not exist; this server serves "
                                f"{served_model_name!r} (GET /v1/models)", "model", "not_found_error")
        max_n = (await bridge.parameters()).get("max_n", "")
        call = parse_call(body, kind, render_chat, tokenizer.encode if tokenizer is not None else None,
                          int(max_n) if max_n.strip().isdigit() else DEFAULT_MAX_N)
        if call.echo and call.logprobs is not None and tokenizer is None:
            raise APIError(400, "echo: with logprobs needs the model folder's tokenizer", "echo")
        echoes = echo_texts(call) if call.echo else [""] * len(call.prompts)
        if not await bridge.ready():
            raise APIError(503, "the model is not ready yet", kind="server_error")
        rid = new_id(kind)
        fan = Fanout(call, bridge.generate, request.is_disconnected)
        first_texts = [tokenizer.token_text(p[0]) if isinstance(p, tuple) and tokenizer is not None else None
                       for p in call.prompts]
        if call.stream:
            events = fan.stream()
            # The first response before the 200: a request Triton refuses gets its error status.
            first = await anext(events, None)
            return StreamingResponse(_sse(call, fan, rid, first, events, served_model_name, echoes, first_texts),
                                     media_type="text/event-stream")
        choices = await fan.collect()
        rows = []
        for c in choices:
            echo = echoes[c.prompt_index]
            rows.append((c, echo + c.text, choice_logprobs(call, c, echo, first_texts[c.prompt_index], c.logprobs)))
        n_in, n_out = fan.usage()
        return completion(call, rid, served_model_name, rows, n_in, n_out).model_dump(exclude_none=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await run(request, "completion")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await run(request, "chat")

    return app


async def _sse(call: Call, fan: Fanout, rid: str, first_event, events, model: str, echoes, first_texts):
    """SSE events for every choice as its responses come: under echo the prompt (and its logprobs) first,
    then the deltas with their logprobs; usage on every chunk with continuous_usage_stats, and after the
    last choice with include_usage."""
    def event(obj) -> str:
        return f"data: {json.dumps(obj.model_dump() if hasattr(obj, 'model_dump') else obj)}\n\n"
    started: set[int] = set()
    offsets: dict[int, int] = {}

    async def all_events():
        if first_event is not None:
            yield first_event
            async for e in events:
                yield e

    def now_usage():
        return usage(*fan.usage()) if call.continuous_usage else None
    try:
        async for c, p in all_events():
            fan.apply(c, p)
            echo = echoes[c.prompt_index]
            first = c.index not in started          # chat's first delta carries the role
            if first:
                started.add(c.index)
                offsets[c.index] = len(echo)
                if call.echo:
                    lp = None
                    if call.logprobs is not None and c.prompt_logprobs is not None:
                        lp = choice_logprobs(call, Choice(c.index, c.prompt_index, prompt_logprobs=c.prompt_logprobs),
                                             "", first_texts[c.prompt_index], []).model_dump()
                    yield event(chunk(call, rid, model, c.index, echo, None, lp, True, now_usage()))
                    first = False
                elif call.prompt_logprobs is not None and c.prompt_logprobs is not None:
                    yield event(chunk(call, rid, model, c.index, "", None, None, True, now_usage(),
                                      prompt_logprobs=c.prompt_logprobs))
                    first = False
            text = "" if call.prompt_only else p.text
            rows = [] if call.prompt_only else list(p.logprobs)
            if not (text or rows or p.finish_reason or p.token_ids):
                continue
            lp = None
            if call.logprobs is not None and rows:
                sub = Choice(c.index, c.prompt_index)
                lp = choice_logprobs(call, sub, "", None, rows)
                if call.kind == "completion":
                    lp.text_offset = [o + offsets[c.index] for o in lp.text_offset]
                lp = lp.model_dump()
            offsets[c.index] += len(text)
            reason = c.finish_reason if p.finish_reason else None
            yield event(chunk(call, rid, model, c.index, text, reason, lp, first, now_usage()))
        if call.include_usage:
            yield event(chunk(call, rid, model, None, None, None, usage_=usage(*fan.usage())))
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
