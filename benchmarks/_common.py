"""Shared helpers for benchmarks: bandwidth probe, medians, markdown tables, machine line."""
from __future__ import annotations

import os
import socket
import statistics
import time

import torch


def read_bandwidth_gbs(num_bytes: int = 1 << 30, repeats: int = 5) -> float:
    """This machine's memory read bandwidth now (GB/s): best of a few full reads of a large buffer."""
    x = torch.ones(num_bytes // 4, dtype=torch.float32)
    x.sum()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t)
    return num_bytes / best / 1e9


def median(xs):
    return statistics.median(xs)


def machine() -> str:
    from hybridllm.profiling.cache import cpu_model
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu_model()}, {os.cpu_count()} cores, {gpu}, torch {torch.__version__}"


def table(headers: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def decode_parser(doc: str):
    """The decode benchmarks' shared flags: --batches, --new-tokens, --repeats (add your own after)."""
    import argparse
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    return ap


def decode_tps(llm, batch: int, new_tokens: int, prompt: str) -> float:
    """Decode tokens/s of `batch` greedy copies of prompt (EOS ignored) through llm.engine, the prefill
    step (and first tokens) excluded."""
    from hybridllm import SamplingParams
    engine = llm.engine
    p = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)
    for i in range(batch):
        engine.add_request(f"bench-{batch}-{i}-{time.perf_counter_ns()}", prompt, p)
    engine.step()                                       # the batch's prefill and first tokens
    t, n = time.perf_counter(), 0
    while engine.has_unfinished_requests():
        n += len(engine.step())
    return n / (time.perf_counter() - t)


def free_ports(n: int) -> list[int]:
    """n free TCP ports on 127.0.0.1 (bound, read, released)."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports
