"""Helpers for tests against a real tritonserver: ports, start-up, HTTP, gRPC streams, metrics."""
from __future__ import annotations

import json
import queue
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from hybridllm.serving.openai.client import build_inputs, to_chunk
from hybridllm.serving.launch.server import ServerError, TritonServer
from hybridllm.serving.openai.frontend import run_frontend

READY_TIMEOUT = 240.0  # two models loading on 2 busy cores; a hung stub fails after this


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def use_this_source(repo: Path) -> None:
    """Points every model.py in the repository at the hybridllm this test imports (a worktree on
    PYTHONPATH, say), not the venv's install, which the stubs would import otherwise."""
    from hybridllm.serving.launch.repository import model_py, package_root
    for path in Path(repo).glob("*/1/model.py"):
        text = model_py(package_root())
        if path.read_text() != text:
            path.write_text(text)


def start_server(repo: Path, workdir: Path, attempts: int = 3, **kwargs) -> TritonServer:
    """Starts tritonserver on free loopback ports; retries when a port was taken in between."""
    use_this_source(repo)
    for attempt in range(attempts):
        http, grpc, metrics = free_ports(3)
        server = TritonServer(repo, http_port=http, grpc_port=grpc, metrics_port=metrics, workdir=workdir,
                              log_file=workdir / f"tritonserver.{attempt}.log", **kwargs).start()
        try:
            server.wait_ready(READY_TIMEOUT)
            return server
        except ServerError as e:
            if "address already in use" not in str(e).lower() or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def http_post(server: TritonServer, path: str, body: dict, timeout: float = 300) -> tuple[int, str]:
    req = urllib.request.Request(f"http://{server.http_url}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def sse_events(text: str) -> list[dict]:
    return [json.loads(line[len("data:"):]) for line in text.splitlines() if line.startswith("data:")]


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)$')


def scrape(server: TritonServer) -> dict[tuple[str, frozenset], float]:
    """Prometheus text -> {(name, frozenset of label pairs): value}."""
    with urllib.request.urlopen(server.metrics_url, timeout=30) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m and not line.startswith("#"):
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(3) or ""))
            out[(m.group(1), labels)] = float(m.group(4))
    return out


def metric(server: TritonServer, name: str, **labels) -> float:
    want = set(labels.items())
    values = [v for (n, ls), v in scrape(server).items() if n == name and want <= ls]
    assert values, f"no sample of {name} with labels {labels}"
    return sum(values)


@dataclass
class StreamResult:
    chunks: list = field(default_factory=list)      # client.Chunk per data response
    finals: int = 0                                  # responses flagged FINAL
    errors: list = field(default_factory=list)       # error messages
    after_final: int = 0                             # responses that came after a FINAL (must be 0)

    @property
    def text(self) -> str:
        return "".join(c.text for c in self.chunks)

    @property
    def token_ids(self) -> list[int]:
        return [t for c in self.chunks for t in c.token_ids]


def grpc_stream(server: TritonServer, model: str, prompt=None, params=None, *, stream: bool = True,
                exclude_input_in_output: bool | None = None, inputs=None, timeout: float = 300) -> StreamResult:
    """One request over a gRPC stream, with every response's FINAL flag and error recorded."""
    import tritonclient.grpc as grpcclient

    q: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: q.put((result, error)))
    res = StreamResult()
    if inputs is None:
        inputs = build_inputs(prompt, params, stream, exclude_input_in_output)
    try:
        client.async_stream_infer(model, inputs, enable_empty_final_response=True)
        deadline = time.monotonic() + timeout
        while not (res.finals or res.errors):
            result, error = q.get(timeout=max(0.1, deadline - time.monotonic()))
            if error is not None:
                res.errors.append(error.message())
                continue
            if result.get_response().parameters["triton_final_response"].bool_param:
                res.finals += 1
            chunk = to_chunk(result)
            if chunk.text or chunk.token_ids or chunk.finish_reason:
                res.chunks.append(chunk)
        time.sleep(0.05)  # anything sent after the FINAL would arrive now
        while not q.empty():
            q.get()
            res.after_final += 1
    finally:
        client.stop_stream()
        client.close()
    return res


def start_frontend(triton_url: str, folder, **kwargs):
    (port,) = free_ports(1)
    server = run_frontend(triton_url, folder, port=port, **kwargs)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "the frontend did not start"
    return server, thread, f"http://127.0.0.1:{port}"


def serve_banner(proc, timeout: float) -> str:
    """The start-up lines `hybridllm serve` prints, up to its "Ctrl-C stops" line (it is serving then)."""
    lines = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        assert line, f"serve ended early: {''.join(lines)}"
        lines.append(line)
        if "Ctrl-C stops" in line:
            return "".join(lines)
    raise AssertionError(f"serve did not start in {timeout:.0f} s: {''.join(lines)}")
