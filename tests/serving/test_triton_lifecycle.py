"""Server start and stop: restart leaks no shared memory or processes, a model that fails to load
fails the start, a hanging load times out, and `hybridllm serve` / `generate` work end to end."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hybridllm.config import EngineConfig
from hybridllm.serving.launch.repository import write_model
from hybridllm.serving.launch.server import ServerError, TritonServer

from .triton_helpers import free_ports, grpc_stream, serve_banner, start_server

pytestmark = pytest.mark.slow      # real tritonserver processes

TINY = "tiny_llm"


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def _tiny_repo(root: Path, tiny_model_dir: Path) -> Path:
    repo = root / "repo"
    write_model(repo, TINY, EngineConfig(model=str(tiny_model_dir), policy="gpu_only", device_kv_bytes=4 << 20,
                                         host_kv_bytes=1 << 20))
    return repo


def test_restart_leaks_no_shm_and_no_process(tmp_path, tiny_model_dir):
    repo = _tiny_repo(tmp_path, tiny_model_dir)
    prefixes = set()
    for round_ in range(2):  # start, serve, stop; then the same again on the same repository
        server = start_server(repo, tmp_path)
        try:
            assert server.leaked_shm(), "the backend's shm regions should carry our prefix while it runs"
            prefixes.add(server.shm_prefix)
            res = grpc_stream(server, TINY, f"round {round_}", {"max_tokens": 4, "temperature": 0.0})
            assert res.errors == [] and len(res.token_ids) == 4
        finally:
            code = server.stop()
        assert code == 0 and not server.killed, "SIGTERM should stop it cleanly"
        assert server.leaked_at_exit == []
        assert _group_gone(server.pid), "a stub outlived the server"
    assert len(prefixes) == 2


def test_model_that_fails_to_load_fails_the_start(tmp_path):
    repo = tmp_path / "repo"
    write_model(repo, "broken", EngineConfig(model=str(tmp_path / "no_such_model")))
    with pytest.raises(ServerError, match="exited with code") as info:
        start_server(repo, tmp_path, attempts=1)
    assert "does not exist" in str(info.value)  # the model's own error, from the log tail


def test_hanging_model_load_times_out(tmp_path):
    repo = tmp_path / "repo"
    folder = write_model(repo, "hangs", EngineConfig(model="default"))
    (folder / "1" / "model.py").write_text(
        "import time\n"
        "class TritonPythonModel:\n"
        "    def initialize(self, args):\n"
        "        time.sleep(3600)\n")
    http, grpc, metrics = free_ports(3)
    server = TritonServer(repo, http_port=http, grpc_port=grpc, metrics_port=metrics, workdir=tmp_path,
                          log_file=tmp_path / "log.txt").start()
    t0 = time.monotonic()
    with pytest.raises(ServerError, match="not ready after"):
        server.wait_ready(timeout=8)
    assert time.monotonic() - t0 < 60
    assert _group_gone(server.pid)
    assert server.leaked_shm() == []


def _hybridllm(*args: str, **kwargs) -> subprocess.Popen:
    exe = Path(sys.executable).parent / "hybridllm"
    return subprocess.Popen([str(exe), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def test_cli_serve_then_generate_then_ctrl_c(tmp_path, tiny_model_dir):
    shm_before = {p.name for p in Path("/dev/shm").glob("hybridllm_*")}
    http, grpc, metrics, oai = free_ports(4)
    serve = _hybridllm("serve", "--model", str(tiny_model_dir), "--device-kv-bytes", str(4 << 20),
                       "--host-kv-bytes", str(1 << 20), "--http-port", str(http), "--grpc-port", str(grpc),
                       "--metrics-port", str(metrics), "--openai-port", str(oai), "--workdir", str(tmp_path),
                       "--log-file", str(tmp_path / "log.txt"))
    try:
        banner = serve_banner(serve, 240)
        assert f"127.0.0.1:{grpc}" in banner and f"http://127.0.0.1:{metrics}/metrics" in banner, banner
        server_pid = int(re.search(r"tritonserver pid (\d+)", banner).group(1))
        gen = _hybridllm("generate", "--url", f"127.0.0.1:{grpc}", "--stream", "--max-tokens", "5", "hello")
        out, _ = gen.communicate(timeout=120)
        assert gen.returncode == 0, out
        assert out.startswith("hello") and "[finish_reason=length]" in out, out
        bad = _hybridllm("generate", "--url", f"127.0.0.1:{grpc}", "x" * 600)  # longer than the context
        out, _ = bad.communicate(timeout=120)
        assert bad.returncode == 1 and "server error" in out and "at most 511" in out, out
        # The OpenAI frontend came up with the server, in front of the same model.
        import json
        import urllib.request
        assert f"http://127.0.0.1:{oai}/v1" in banner, banner
        with urllib.request.urlopen(f"http://127.0.0.1:{oai}/health", timeout=30) as r:
            assert r.status == 200
        req = urllib.request.Request(f"http://127.0.0.1:{oai}/v1/completions", headers={"Content-Type": "application/json"},
                                     data=json.dumps({"model": "hybrid_llm", "prompt": "hello", "max_tokens": 5,
                                                      "ignore_eos": True}).encode())
        with urllib.request.urlopen(req, timeout=120) as r:
            assert json.loads(r.read())["usage"]["completion_tokens"] == 5
    finally:
        serve.send_signal(signal.SIGINT)  # what Ctrl-C does
        rest, _ = serve.communicate(timeout=60)
    assert serve.returncode == 0, rest
    assert _group_gone(server_pid)
    assert {p.name for p in Path("/dev/shm").glob("hybridllm_*")} <= shm_before


def test_serve_refuses_a_busy_openai_port_before_starting_anything(capsys):
    import socket

    from hybridllm.config import EngineConfig
    from hybridllm.serving.triton.options import ServingLimits
    from hybridllm.serving.launch.server import serve
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert serve(EngineConfig(model="/nowhere"), ServingLimits(), openai_port=port) == 1
    err = capsys.readouterr().err
    assert f"openai_port {port}" in err and "--openai-port" in err
