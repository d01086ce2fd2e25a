"""Serving throughput and latency over Triton gRPC streams, against the same load in process.

    python benchmarks/serving.py [--concurrency 1,16] [--requests-per-stream 2] [--output-len 128]

Starts tritonserver (nvidia-pytriton wheel) with the default model on free loopback ports, then
for each concurrency C keeps C gRPC streams busy with greedy, EOS-ignoring requests and reports
requests/s, output tokens/s, mean/p99 time to first token and time per output token. The same
workload then runs in process (the same closed loop on LLM.engine, max_num_seqs=C) and the last
column is served tokens/s over in-process tokens/s (median of per-pair ratios, runs interleaved
because this machine's speed drifts): the cost of the front door.
"""
from __future__ import annotations

import argparse
import os
import queue
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from _common import free_ports, machine, table  # noqa: E402

SENTENCES = ["Once upon a time, there was a little", "The capital of France is", "In a distant galaxy,",
             "The best way to learn to cook is", "Yesterday the weather was", "My favourite book is about"]


def prompts(n: int) -> list[str]:
    return [f"{SENTENCES[i % len(SENTENCES)]} (story {i})" for i in range(n)]


def one_stream(url: str, model: str, prompt: str, params: dict) -> tuple[float, list[float], int]:
    """-> (arrival, token arrival times, tokens) for one request."""
    import tritonclient.grpc as grpcclient

    from hybridllm.serving.openai.client import build_inputs, to_chunk

    q: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(url)
    client.start_stream(callback=lambda result, error: q.put((result, error, time.perf_counter())))
    t0 = time.perf_counter()
    client.async_stream_infer(model, build_inputs(prompt, params, True), enable_empty_final_response=True)
    times, n, final = [], 0, False
    while not final:
        result, error, t = q.get(timeout=600)
        if error is not None:
            raise RuntimeError(error.message())
        final = result.get_response().parameters["triton_final_response"].bool_param
        k = len(to_chunk(result).token_ids)
        if k:
            times.append(t)
            n += k
    client.stop_stream()
    client.close()
    return t0, times, n


def served(url: str, model: str, work: list[str], params: dict, concurrency: int) -> dict:
    todo: queue.Queue = queue.Queue()
    for p in work:
        todo.put(p)
    results, lock = [], threading.Lock()

    def worker():
        while True:
            try:
                p = todo.get_nowait()
            except queue.Empty:
                return
            r = one_stream(url, model, p, params)
            with lock:
                results.append(r)

    t = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t
    ttft = [times[0] - t0 for t0, times, _ in results]
    tpot = [(times[-1] - times[0]) / (len(times) - 1) for _, times, _ in results if len(times) > 1]
    tokens = sum(n for _, _, n in results)
    return {"req_s": len(results) / wall, "tok_s": tokens / wall, "ttft": ttft, "tpot": tpot}


def in_process(llm, work: list[str], params: dict, concurrency: int) -> dict:
    """The same closed loop as `served`, on llm.engine in this process: C requests in flight."""
    from hybridllm import SamplingParams

    engine, sp = llm.engine, SamplingParams(**params)
    todo = list(enumerate(work))
    arrival, times, tokens = {}, {}, 0

    def admit():
        i, p = todo.pop(0)
        rid = f"bench-{i}-{time.perf_counter_ns()}"
        engine.add_request(rid, p, sp)
        arrival[rid], times[rid] = time.perf_counter(), []

    t = time.perf_counter()
    for _ in range(min(concurrency, len(todo))):
        admit()
    while engine.has_unfinished_requests():
        for out in engine.step():
            now = time.perf_counter()
            times[out.request_id].append(now)
            tokens += len(out.delta_token_ids)
            if out.finished and todo:
                admit()
    wall = time.perf_counter() - t
    ttft = [ts[0] - arrival[r] for r, ts in times.items()]
    tpot = [(ts[-1] - ts[0]) / (len(ts) - 1) for ts in times.values() if len(ts) > 1]
    return {"req_s": len(times) / wall, "tok_s": tokens / wall, "ttft": ttft, "tpot": tpot}


def p99(xs: list[float]) -> float:
    return sorted(xs)[min(len(xs) - 1, int(round(0.99 * (len(xs) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", default="1,16")
    ap.add_argument("--requests-per-stream", type=int, default=2)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default="default")
    args = ap.parse_args()

    from hybridllm import LLM
    from hybridllm.config import EngineConfig
    from hybridllm.models.default import resolve_model
    from hybridllm.serving.launch.repository import MODEL_NAME, write_model
    from hybridllm.serving.launch.server import TritonServer

    levels = [int(c) for c in args.concurrency.split(",")]
    params = {"max_tokens": args.output_len, "temperature": 0.0, "ignore_eos": True}
    warm = {"max_tokens": 4, "temperature": 0.0}
    model_path = str(resolve_model(args.model))
    kv = 256 << 20
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        write_model(repo, MODEL_NAME, EngineConfig(model=model_path, device_kv_bytes=kv, max_num_seqs=max(levels)))
        http, grpc, metrics = free_ports(3)
        server = TritonServer(repo, http_port=http, grpc_port=grpc, metrics_port=metrics, workdir=Path(tmp),
                              log_file=Path(tmp) / "server.log").start()
        try:
            server.wait_ready(600)
            one_stream(server.grpc_url, MODEL_NAME, "warm up", warm)
            for c in levels:
                llm = LLM(model_path, device_kv_bytes=kv, max_num_seqs=c)  # the same batches as C streams
                in_process(llm, ["warm up"], warm, 1)
                work = prompts(c * args.requests_per_stream)
                runs, local = [], []
                for _ in range(args.repeats):  # interleaved: this machine's speed drifts between runs
                    runs.append(served(server.grpc_url, MODEL_NAME, work, params, c))
                    local.append(in_process(llm, work, params, c))
                del llm
                ratio = statistics.median(r["tok_s"] / lo["tok_s"] for r, lo in zip(runs, local))
                for name, rs in (("served (gRPC)", runs), ("in process", local)):
                    mid = sorted(rs, key=lambda r: r["tok_s"])[len(rs) // 2]   # the median run
                    ttft = [t for r in rs for t in r["ttft"]]
                    tpot = [t for r in rs for t in r["tpot"]]
                    rows.append([c, name, f"{mid['req_s']:.2f}", f"{mid['tok_s']:.1f}",
                                 f"{statistics.mean(ttft) * 1e3:.0f}", f"{p99(ttft) * 1e3:.0f}",
                                 f"{statistics.mean(tpot) * 1e3:.1f}", f"{p99(tpot) * 1e3:.1f}",
                                 f"{ratio:.2f}" if rs is runs else ""])
        finally:
            server.stop()
    print(f"# serving: {args.model}, greedy, {args.output_len} output tokens, {args.requests_per_stream} requests "
          f"per stream, median of {args.repeats} interleaved runs; {machine()}")
    print(table(["concurrency", "path", "req/s", "out tok/s", "TTFT mean ms", "TTFT p99 ms", "TPOT mean ms",
                 "TPOT p99 ms", "served / in-process tok/s"], rows))


if __name__ == "__main__":
    main()
