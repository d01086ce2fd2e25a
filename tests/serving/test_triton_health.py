"""Engine health is readiness, against a real tritonserver: an engine thread that stalls past
engine_stall_timeout_s or dies (fault injection, a test-only model parameter) turns the engine
health gauges and the OpenAI frontend's /health (the chart's readiness probe) to not ready, new
requests are refused with UNAVAILABLE, and the request on a dead engine ends with an error, not a
hang. Also instance_group count 2: two engines, both serve, outputs equal the in-process engine's."""
from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import pytest

from hybridllm import LLM, SamplingParams
from hybridllm.config import EngineConfig
from hybridllm.serving.openai.frontend import run_frontend
from hybridllm.serving.triton.options import FAULT_PROMPT, ServingLimits
from hybridllm.serving.launch.repository import write_model

from .triton_helpers import free_ports, grpc_stream, metric, scrape, start_server

pytestmark = pytest.mark.slow      # real tritonserver processes

STALL, DEATH, PAIR, VICTIM = "tiny_stall", "tiny_death", "tiny_pair", "tiny_victim"
STALL_TIMEOUT = 3


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("health")
    repo = root / "repo"
    engine = EngineConfig(model=str(tiny_model_dir), policy="gpu_only", device_kv_bytes=4 << 20, host_kv_bytes=1 << 20)
    write_model(repo, STALL, engine, ServingLimits(engine_stall_timeout_s=STALL_TIMEOUT, fault_injection="engine_stall"))
    write_model(repo, DEATH, engine, ServingLimits(engine_stall_timeout_s=STALL_TIMEOUT, fault_injection="engine_death"))
    write_model(repo, PAIR, engine, instance_count=2)
    write_model(repo, VICTIM, engine, ServingLimits(engine_stall_timeout_s=STALL_TIMEOUT))
    srv = start_server(repo, root)
    yield srv
    srv.stop()
    assert srv.proc.returncode == 0, f"tritonserver exited with {srv.proc.returncode} (a stuck engine must not block exit)"
    assert srv.leaked_at_exit == []


def _frontend(server, model: str):
    (port,) = free_ports(1)
    fe = run_frontend(server.grpc_url, None, port=port, metrics_url=server.metrics_url, triton_model=model)
    thread = threading.Thread(target=fe.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not fe.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fe.started
    return fe, thread, f"http://127.0.0.1:{port}/health"


def _health(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _wait_health(url: str, status: int, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        code, body = _health(url)
        if code == status or time.monotonic() > deadline:
            assert code == status, f"/health stayed {code} {body}, wanted {status}"
            return body
        time.sleep(0.25)


PARAMS = {"max_tokens": 4, "temperature": 0}


@pytest.mark.parametrize("model, reason", [(STALL, "no heartbeat|no progress|not ready"),
                                           (DEATH, "not ready")])
def test_a_stuck_or_dead_engine_fails_the_readiness_probe(server, model, reason):
    import re
    fe, thread, url = _frontend(server, model)
    try:
        _wait_health(url, 200, 10)
        assert metric(server, "hybridllm_engine_ready", model=model) == 1
        assert grpc_stream(server, model, "hello", PARAMS).finals == 1

        results = []
        t0 = time.monotonic()
        poison = threading.Thread(target=lambda: results.append(
            grpc_stream(server, model, FAULT_PROMPT, PARAMS, timeout=STALL_TIMEOUT + 30)), daemon=True)
        poison.start()
        body = _wait_health(url, 503, STALL_TIMEOUT + 10)
        assert re.search(reason, body["reason"]), body
        assert time.monotonic() - t0 < STALL_TIMEOUT + 10
        # The gauge says so too once the watchdog wrote it (at most a second later).
        deadline = time.monotonic() + 5
        while metric(server, "hybridllm_engine_ready", model=model) != 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert metric(server, "hybridllm_engine_ready", model=model) == 0
        # New work is refused at once, with the reason, instead of queueing behind a dead engine.
        late = grpc_stream(server, model, "hello", PARAMS, timeout=30)
        assert late.errors and "not ready" in late.errors[0], late
        # The request the engine died or stalled on ends with an error, not a hang.
        poison.join(15)
        assert results and results[0].errors and "engine" in results[0].errors[0], results
    finally:
        fe.should_exit = True
        thread.join(timeout=10)


def test_a_killed_stub_process_fails_the_readiness_probe(server):
    """A real fault, no hook: the model's stub process is SIGKILLed. tritonserver 2.51 keeps answering
    200 on /v2/health/ready (and never restarts the stub); the heartbeat goes stale and /health says so."""
    import os
    import signal
    import subprocess
    fe, thread, url = _frontend(server, VICTIM)
    try:
        _wait_health(url, 200, 10)
        pids = subprocess.run(["pgrep", "-f", "triton_python_backend_stub"], capture_output=True, text=True).stdout
        mine = [int(p) for p in pids.split() if _stub_of(int(p), VICTIM) and os.getpgid(int(p)) == server.pid]
        assert len(mine) == 1, mine
        os.kill(mine[0], signal.SIGKILL)
        body = _wait_health(url, 503, STALL_TIMEOUT + 15)
        assert "no heartbeat" in body["reason"], body
        assert server.is_ready()     # what Triton itself says: why the probe reads our gauges
    finally:
        fe.should_exit = True
        thread.join(timeout=10)


def _stub_of(pid: int, model: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f"/{model}/".encode() in f.read()
    except OSError:
        return False


def test_instance_count_two_engines_both_serve(server, tiny_model_dir):
    """Two instances (two stub processes, two engines): a concurrent load reaches both (their
    per-instance series), every answer equals the in-process engine's, and neither leaks KV."""
    prompts = [f"story number {i} begins" for i in range(16)]
    params = {"max_tokens": 8, "temperature": 0, "ignore_eos": True}
    results: dict[int, object] = {}

    def one(i):
        results[i] = grpc_stream(server, PAIR, prompts[i], params, timeout=120)
    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(150)
    llm = LLM(str(tiny_model_dir), policy="gpu_only", device_kv_bytes=4 << 20)
    want = llm.generate(prompts, SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))
    for i, w in enumerate(want):
        assert results[i].finals == 1 and not results[i].errors, results[i]
        assert results[i].token_ids == list(w.token_ids), i
    served = {dict(labels).get("instance"): v for (name, labels), v in scrape(server).items()
              if name == "hybridllm_generation_tokens_total" and ("model", PAIR) in labels}
    assert len(served) == 2 and all(v > 0 for v in served.values()), served
    assert sum(served.values()) == 8 * len(prompts)
    assert metric(server, "hybridllm_kv_blocks_used", model=PAIR) == 0
