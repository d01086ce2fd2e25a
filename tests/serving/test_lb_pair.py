"""deploy/local: two `hybridllm serve` replicas (the tiny model) behind Debian's nginx, least_conn over
gRPC. A mixed load (200 requests at concurrency 32: a fifth malformed, a tenth cancelled mid-stream,
mixed prompt and output lengths) reaches both replicas and every request gets exactly one FINAL;
then one replica is killed mid-load: what it was running ends with an error, never a hang, every
request sent afterwards completes on the survivor, and the survivor's KV blocks return to 0."""
from __future__ import annotations

import importlib.util
import queue
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from hybridllm.serving.openai.client import build_inputs, raw_inputs
from hybridllm.utils import cache_root


pytestmark = pytest.mark.slow      # real tritonserver processes and nginx

ROOT = Path(__file__).resolve().parents[2]
MODEL = "hybrid_llm"
DEADLINE_S = 60.0                  # a request with no FINAL by then has hung


def _lbpair():
    spec = importlib.util.spec_from_file_location("lbpair", ROOT / "deploy" / "local" / "lbpair.py")
    mod = importlib.util.module_from_spec(spec)
    import sys
    sys.modules["lbpair"] = mod        # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


lbpair = _lbpair()


@pytest.fixture(scope="module")
def pair(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("lbpair")
    try:  # a registry that cannot be reached is a failure: nothing here may be assumed installed
        binary = lbpair.ensure_nginx(cache_root() / "nginx")
    except lbpair.SetupError as e:
        pytest.fail(str(e))
    args = ["--model", str(tiny_model_dir), "--policy", "gpu_only", "--device-kv-bytes", str(8 << 20),
            "--host-kv-bytes", str(1 << 20), "--max-text-input-bytes", "2048", "--max-tokens-non-stream", "256"]
    replicas = []
    for name in ("a", "b"):
        http, grpc, metrics = lbpair.free_ports(3)
        replicas.append(lbpair.Replica(name, http, grpc, metrics, root / name, args).start())
    nginx = None
    try:
        for r in replicas:
            r.wait_ready(240)
        grpc_port, http_port = lbpair.free_ports(2)
        conf = lbpair.render_nginx_conf(root / "nginx", [r.grpc_port for r in replicas],
                                        [r.http_port for r in replicas], grpc_port=grpc_port, http_port=http_port)
        nginx = lbpair.Nginx(binary, root / "nginx", conf).start()
        _wait_port(grpc_port)
        yield f"127.0.0.1:{grpc_port}", replicas
    finally:
        if nginx:
            nginx.stop()
        for r in replicas:
            r.stop()


def _wait_port(port: int, timeout: float = 10) -> None:
    import socket
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nginx is not listening on {port}")


def _metric(replica, name: str) -> float:
    import re
    import urllib.request
    with urllib.request.urlopen(replica.metrics_url, timeout=10) as r:
        text = r.read().decode()
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}\{{[^}}]*\}}\s+(\S+)$", text, re.M))


@dataclass
class Outcome:
    kind: str
    sent_at: float
    finals: int = 0
    errors: list = field(default_factory=list)
    tokens: int = 0
    after_final: int = 0
    hung: bool = False


def _malformed(rng: random.Random, i: int):
    which = i % 5
    if which == 0:
        return build_inputs("hi", None, True) + raw_inputs({"sampling_parameters": np.array([b"{not json"], object)})
    if which == 1:
        return build_inputs("hi", {"temperature": -1}, True)
    if which == 2:
        return build_inputs("x" * 5000, {"max_tokens": 4}, True)                 # over max_text_input_bytes
    if which == 3:
        return raw_inputs({"input_ids": np.array([1, 2, 300], np.int32), "stream": np.array([True])})
    return raw_inputs({"stream": np.array([True])})                              # no prompt at all


def request(url: str, kind: str, rng: random.Random, i: int, cancel_after: int = 1) -> Outcome:
    import tritonclient.grpc as grpcclient
    out = Outcome(kind, time.monotonic())
    if kind == "malformed":
        inputs = _malformed(rng, i)
    else:
        prompt = "".join(rng.choice("abcdefghij klmnop") for _ in range(rng.randint(3, 300)))
        max_tokens = 200 if kind in ("cancel", "long") else rng.choice([1, 4, 16, 48, 96])
        inputs = build_inputs(prompt, {"max_tokens": max_tokens, "temperature": 0.0}, kind != "plain")
    q: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(url)
    client.start_stream(callback=lambda result, error: q.put((result, error)))
    cancelled = False
    try:
        client.async_stream_infer(MODEL, inputs, enable_empty_final_response=True)
        deadline = out.sent_at + DEADLINE_S
        while not (out.finals or out.errors):
            try:
                result, error = q.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                out.hung = True
                break
            if error is not None:
                out.errors.append(error.message())
                continue
            out.tokens += len(result.as_numpy("output_ids") if result.as_numpy("output_ids") is not None else [])
            if result.get_response().parameters["triton_final_response"].bool_param:
                out.finals += 1
            elif kind == "cancel" and out.tokens >= cancel_after:
                client.stop_stream(cancel_requests=True)     # the client goes away mid-stream
                cancelled = True
                break
        if not cancelled:
            time.sleep(0.05)
            out.after_final = q.qsize()
    finally:
        if not cancelled:
            client.stop_stream()
        client.close()
    return out


def _kinds(n: int, rng: random.Random) -> list[str]:
    kinds = ["malformed"] * (n // 5) + ["cancel"] * (n // 10)
    kinds += [rng.choice(["stream", "plain"]) for _ in range(n - len(kinds))]
    rng.shuffle(kinds)
    return kinds


def test_mixed_load_reaches_both_replicas_and_every_request_ends_once(pair):
    url, replicas = pair
    rng = random.Random(15)
    kinds = _kinds(200, rng)
    with ThreadPoolExecutor(32) as pool:
        outcomes = list(pool.map(lambda a: request(url, a[1], random.Random(a[0]), a[0]), enumerate(kinds)))
    assert not [o for o in outcomes if o.hung], "requests hung"
    assert not [o for o in outcomes if o.after_final], "responses after a FINAL"
    for o in outcomes:
        if o.kind == "malformed":  # refused by the replica, naming the input (not an nginx error)
            assert o.errors and not o.finals, o
            assert o.errors[0].startswith(("text_input", "input_ids", "sampling_parameters")), o
        elif o.kind != "cancel":
            assert o.finals == 1 and not o.errors, o
    served = [_metric(r, "hybridllm_generation_tokens_total") for r in replicas]
    assert all(s > 0 for s in served), f"a replica served nothing: {served}"
    ok_tokens = sum(o.tokens for o in outcomes if o.kind in ("stream", "plain"))
    assert sum(served) >= ok_tokens
    _assert_drained(replicas)


def _assert_drained(replicas, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while True:
        used = [(_metric(r, "hybridllm_kv_blocks_used"), _metric(r, "hybridllm_num_requests_running"))
                for r in replicas]
        if all(u == (0, 0) for u in used) or time.monotonic() > deadline:
            assert all(u == (0, 0) for u in used), f"KV blocks / running requests left: {used}"
            return
        time.sleep(0.2)


def test_a_replica_killed_mid_load_fails_its_requests_and_the_survivor_takes_the_rest(pair):
    url, (survivor, victim) = pair
    outcomes: list[Outcome] = []
    killed_at: list[float] = []

    def load():
        def one(i):
            return request(url, "long", random.Random(i), i)
        with ThreadPoolExecutor(16) as pool:
            futures = []
            for i in range(80):
                futures.append(pool.submit(one, i))
                time.sleep(0.05)
            outcomes.extend(f.result() for f in futures)
    t = threading.Thread(target=load)
    t.start()
    deadline = time.monotonic() + 60
    while _metric(victim, "hybridllm_num_requests_running") < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    victim.crash()
    killed_at.append(time.monotonic())
    t.join(DEADLINE_S * 3)
    assert not t.is_alive()
    assert len(outcomes) == 80 and not [o for o in outcomes if o.hung], "a request hung"
    before = [o for o in outcomes if o.sent_at < killed_at[0]]
    after = [o for o in outcomes if o.sent_at >= killed_at[0] + 0.5]  # nginx sees the dead port at once
    assert any(o.errors for o in before), "nothing was running on the killed replica"
    for o in before:
        assert (o.finals == 1) != bool(o.errors), o
    assert after and all(o.finals == 1 and not o.errors for o in after), [o for o in after if o.errors][:3]
    _assert_drained([survivor])
