"""Soak: a real tritonserver with the default model under Poisson load at a fraction of its measured
capacity, mixed with bad requests and clients that go away, for minutes; then what grew.

    python benchmarks/soak.py --duration 600 [--load 0.8] [--capacity-seconds 60]

1. Starts tritonserver (the nvidia-pytriton wheel) with the default model on free loopback ports.
2. Measures capacity: a closed loop of --concurrency streams of normal requests for --capacity-seconds;
   capacity = completed requests/s.
3. Sends Poisson arrivals at --load x capacity for --duration s. Each arrival is one of: normal (streamed,
   mixed prompt and output lengths), malformed sampling_parameters, an oversized text_input (over
   max_text_input_bytes), invalid UTF-8 in text_input, a huge input_ids array (over max_input_ids), a
   JSON bomb in sampling_parameters (nested too deeply, or over max_sampling_parameters_bytes), and a
   client that disconnects mid-stream.
4. Reports requests served, errors by kind (expected refusals vs anything else), p50/p99 TTFT of the
   normal requests, the server's RSS (tritonserver + its stub) and KV blocks in use at start and end,
   and restarts (the stub's pid changing, the server exiting). Prints a markdown table and writes JSON.
Run it by hand on an otherwise idle machine; it is not a test.
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import random
import re
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import machine, table  # noqa: E402

MODEL = "hybrid_llm"
WORDS = ("once upon a time there was a little girl who lived in a village near the forest and every day "
         "she walked to the river to see the boats").split()
FIELDS = ("text_input", "input_ids", "sampling_parameters", "parameters")
BAD_KINDS = ("malformed", "oversized", "bad_utf8", "huge_ids", "json_bomb")
MIX = {"normal": 0.70, "malformed": 0.06, "oversized": 0.04, "bad_utf8": 0.04, "huge_ids": 0.04,
       "json_bomb": 0.04, "disconnect": 0.08}


def grpc_inputs(kind: str, rng: random.Random):
    from hybridllm.serving.openai.client import build_inputs, raw_inputs
    prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 120)))
    params = {"max_tokens": rng.choice([8, 16, 32, 64, 96]), "temperature": 0.0, "ignore_eos": True}
    if kind in ("normal", "disconnect"):
        return build_inputs(prompt, params, True)
    if kind == "malformed":
        return rng.choice([build_inputs(prompt, {"temperature": -1}, True),
                           build_inputs(prompt, {"max_tokens": "many"}, True),
                           raw_inputs({"text_input": np.array([prompt.encode()], object),
                                 "sampling_parameters": np.array([b"{not json"], object)})])
    if kind == "oversized":
        return build_inputs("x" * ((1 << 20) + 1), params, True)
    if kind == "bad_utf8":
        return raw_inputs({"text_input": np.array([b"hello \xff\xfe\xfd world"], object), "stream": np.array([True])})
    if kind == "huge_ids":
        return raw_inputs({"input_ids": np.ones((1 << 17) + 1, np.int32), "stream": np.array([True])})
    if kind == "json_bomb":
        bomb = rng.choice(["[" * 100000 + "]" * 100000, '{"stop": [' + ",".join(['"a"'] * 20000) + "]}"])
        return raw_inputs({"text_input": np.array([prompt.encode()], object),
                     "sampling_parameters": np.array([bomb.encode()], object)})
    raise ValueError(kind)


def one(url: str, kind: str, seed: int, deadline_s: float = 600) -> dict:
    """-> {kind, ok, error, ttft, tokens}; a disconnecting client goes away after its second token."""
    import tritonclient.grpc as grpcclient
    rng = random.Random(seed)
    inputs = grpc_inputs(kind, rng)
    q: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(url)
    client.start_stream(callback=lambda result, error: q.put((result, error, time.perf_counter())))
    t0 = time.perf_counter()
    out = {"kind": kind, "ok": False, "error": None, "ttft": None, "tokens": 0}
    try:
        client.async_stream_infer(MODEL, inputs, enable_empty_final_response=True)
        while True:
            try:
                r, e, t = q.get(timeout=max(0.1, t0 + deadline_s - time.perf_counter()))
            except queue.Empty:
                out["error"] = "client deadline (hung)"
                break
            if e is not None:
                out["error"] = e.message()
                break
            ids = r.as_numpy("output_ids")
            if ids is not None and len(ids):
                out["ttft"] = out["ttft"] or t - t0
                out["tokens"] += len(ids)
            if r.get_response().parameters["triton_final_response"].bool_param:
                out["ok"] = True
                break
            if kind == "disconnect" and out["tokens"] >= 2:
                out["ok"] = True
                break
    finally:
        client.stop_stream(cancel_requests=kind == "disconnect")
        client.close()
    return out


def scrape(metrics_url: str) -> dict[str, float]:
    with urllib.request.urlopen(metrics_url, timeout=30) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for m in re.finditer(r"^(hybridllm_\w+|nv_inference_request_\w+)(\{[^}]*\})?\s+(\S+)$", text, re.M):
        out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3))
    return out


def group_pids(pgid: int) -> list[int]:
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if os.getpgid(int(p.name)) == pgid:
                    pids.append(int(p.name))
            except OSError:
                pass
    return sorted(pids)


def rss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            m = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
            total += int(m.group(1)) if m else 0
        except OSError:
            pass
    return total / 1024


def rss_by_process(pids: list[int]) -> dict[str, float]:
    """{'tritonserver': {rss, RssAnon, RssShmem} MiB, 'stub (pid N)': ...}: which process grew, and how."""
    out = {}
    for pid in pids:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            name = "tritonserver" if cmd[0].endswith(b"tritonserver") else f"stub (pid {pid})"
            status = Path(f"/proc/{pid}/status").read_text()
            # Anonymous memory (heaps) apart from shared memory (the backend's /dev/shm pool, which
            # grows to the largest requests seen and is counted in both processes).
            parts = {k: int(v) / 1024 for k, v in re.findall(r"(RssAnon|RssShmem):\s+(\d+) kB", status)}
            out[name] = {"rss": round(rss_mib([pid]), 1), **{k: round(v, 1) for k, v in parts.items()}}
        except OSError:
            pass
    return out


def capacity(url: str, concurrency: int, seconds: float) -> float:
    stop = time.monotonic() + seconds
    done = []

    def worker(w):
        i = 0
        while time.monotonic() < stop:
            r = one(url, "normal", 10_000 * w + i, deadline_s=120)
            i += 1
            if r["ok"]:
                done.append(time.monotonic())
    t0 = time.monotonic()
    threads = [threading.Thread(target=worker, args=(w,)) for w in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(done) / (time.monotonic() - t0)


def pct(xs, q):
    return statistics.quantiles(xs, n=100)[q - 1] if len(xs) >= 2 else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=600, help="seconds of Poisson load")
    ap.add_argument("--load", type=float, default=0.8, help="fraction of the measured capacity")
    ap.add_argument("--capacity-seconds", type=float, default=60)
    ap.add_argument("--concurrency", type=int, default=16, help="streams while measuring capacity")
    ap.add_argument("--model", default="default")
    ap.add_argument("--seed", type=int, default=15)
    ap.add_argument("--json", default=None, help="write the figures here too")
    args = ap.parse_args()

    from hybridllm.config import EngineConfig
    from hybridllm.models.default import resolve_model
    from hybridllm.serving.launch.repository import MODEL_NAME, package_root, write_model
    from hybridllm.serving.launch.server import TritonServer

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.serving.triton_helpers import free_ports

    model = str(resolve_model(args.model))
    tmp = Path(tempfile.mkdtemp(prefix="soak-"))
    write_model(tmp / "repo", MODEL_NAME, EngineConfig(model=model), source_root=package_root())
    http, grpc, metrics = free_ports(3)
    server = TritonServer(tmp / "repo", http_port=http, grpc_port=grpc, metrics_port=metrics, workdir=tmp,
                          log_file=tmp / "server.log").start()
    server.wait_ready(900)
    url, rng = server.grpc_url, random.Random(args.seed)
    try:
        cap = capacity(url, args.concurrency, args.capacity_seconds)
        rate = args.load * cap
        print(f"soak: capacity {cap:.2f} req/s at concurrency {args.concurrency}; Poisson at {rate:.2f} req/s "
              f"for {args.duration:.0f} s", flush=True)
        time.sleep(2)
        pids0 = group_pids(server.pid)
        start = {"rss_mib": rss_mib(pids0), **scrape(server.metrics_url)}
        samples = [(0.0, start["rss_mib"])]
        per_process = [(0.0, rss_by_process(pids0))]
        results, futures = [], []
        kinds, weights = list(MIX), list(MIX.values())
        t0 = time.monotonic()
        next_sample = t0 + 30
        with ThreadPoolExecutor(256) as pool:
            i, t_next = 0, t0
            while t_next < t0 + args.duration:
                time.sleep(max(0.0, t_next - time.monotonic()))
                futures.append(pool.submit(one, url, rng.choices(kinds, weights)[0], args.seed * 1_000_003 + i))
                i += 1
                t_next += rng.expovariate(rate)
                if time.monotonic() >= next_sample:
                    samples.append((time.monotonic() - t0, rss_mib(group_pids(server.pid))))
                    if len(samples) % 4 == 1:
                        per_process.append((time.monotonic() - t0, rss_by_process(group_pids(server.pid))))
                    next_sample += 30
            results = [f.result() for f in futures]
        time.sleep(3)  # cancellations are polled every 0.1 s; metrics follow the next report
        pids1 = group_pids(server.pid)
        end = {"rss_mib": rss_mib(pids1), **scrape(server.metrics_url)}
        samples.append((time.monotonic() - t0, end["rss_mib"]))
        per_process.append((time.monotonic() - t0, rss_by_process(pids1)))
        alive = server.proc.poll() is None
    finally:
        server.stop()

    normal = [r for r in results if r["kind"] == "normal"]
    ttft = [r["ttft"] for r in normal if r["ok"] and r["ttft"] is not None]
    errors = Counter()
    for r in results:
        if r["error"] is not None:
            # A refusal names the input it refuses (serving/triton/request_io.py); anything else is reported as is.
            expected = r["kind"] in BAD_KINDS and r["error"].startswith(FIELDS)
            errors[(r["kind"], "refused as expected" if expected else r["error"][:80])] += 1
        elif r["kind"] in BAD_KINDS:
            errors[(r["kind"], "ACCEPTED (should have been refused)")] += 1
    figures = {
        "machine": machine(), "date": time.strftime("%Y-%m-%d"), "duration_s": args.duration,
        "capacity_rps": round(cap, 3), "offered_rps": round(rate, 3), "requests": len(results),
        "by_kind": dict(Counter(r["kind"] for r in results)),
        "served": sum(r["ok"] for r in normal), "normal_failed": sum(not r["ok"] for r in normal),
        "disconnected": sum(r["ok"] for r in results if r["kind"] == "disconnect"),
        "errors": {f"{k} / {why}": n for (k, why), n in sorted(errors.items())},
        "ttft_p50_ms": round(1000 * pct(ttft, 50), 1), "ttft_p99_ms": round(1000 * pct(ttft, 99), 1),
        "rss_mib_start": round(start["rss_mib"], 1), "rss_mib_end": round(end["rss_mib"], 1),
        "rss_mib_samples": [(round(t), round(v, 1)) for t, v in samples],
        "rss_mib_by_process": [(round(t), v) for t, v in per_process],
        "kv_blocks_used_start": start.get("hybridllm_kv_blocks_used"),
        "kv_blocks_used_end": end.get("hybridllm_kv_blocks_used"),
        "running_end": end.get("hybridllm_num_requests_running"),
        "engine_ready_end": end.get("hybridllm_engine_ready"),
        "restarts": int(pids0 != pids1) + int(not alive), "server_pids_start": pids0, "server_pids_end": pids1,
    }
    rows = [[k, v] for k, v in figures.items() if k not in ("errors", "rss_mib_samples", "by_kind",
                                                             "rss_mib_by_process")]
    rows += [[f"error: {k}", n] for k, n in figures["errors"].items()]
    rows += [["requests by kind", figures["by_kind"]], ["RSS MiB every 30 s", figures["rss_mib_samples"]],
             ["RSS MiB by process", figures["rss_mib_by_process"]]]
    print(table(["figure", "value"], rows))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
