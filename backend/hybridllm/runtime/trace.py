"""A Chrome-trace recorder (open the JSON in Perfetto or chrome://tracing).

On CUDA, device spans are timed with CUDA events on the stream that runs them, so the
device lanes show when the GPU ran the work, not when Python queued it; they are resolved
(one synchronize) when the trace is saved.
"""
from __future__ import annotations

import json
import os
import threading
import time
from contextlib import contextmanager

import torch

LANES = {"device": 1, "host": 2, "device B": 3, "scheduler": 4, "planner": 5}


class Tracer:
    """Passed to LLMEngine (LLM(..., tracer=)); the runtime attaches it to its compute device."""

    def __init__(self, device: str | torch.device | None = None):
        self.events: list[dict] = []
        self._pending: list[tuple] = []             # CUDA spans: (lane, name, args, start event, end event)
        self._lock = threading.Lock()
        self.cuda = False
        self._t0 = time.perf_counter()
        if device is not None:
            self.attach(device)

    def attach(self, device: str | torch.device) -> None:
        """Times device spans on `device`: with CUDA events there, else with the host clock."""
        self.cuda = torch.device(device).type == "cuda"
        if self.cuda:
            torch.cuda.synchronize()
            self._ref = torch.cuda.Event(enable_timing=True)
            self._ref.record()
            torch.cuda.synchronize()
        self._t0 = time.perf_counter()

    def instant(self, lane: str, name: str, **args) -> None:
        """A point in time on a lane, e.g. a scheduler decision and its reason."""
        with self._lock:
            self.events.append({"name": name, "ph": "i", "s": "t", "pid": os.getpid(), "tid": LANES.get(lane, 9),
                                "ts": (time.perf_counter() - self._t0) * 1e6, "args": args})

    @contextmanager
    def span(self, lane: str, name: str, **args):
        if self.cuda and lane.startswith("device"):
            start_ev = torch.cuda.Event(enable_timing=True)
            start_ev.record()                       # on the current stream: B's spans on B's stream
            try:
                yield
            finally:
                end_ev = torch.cuda.Event(enable_timing=True)
                end_ev.record()
                with self._lock:
                    self._pending.append((lane, name, args, start_ev, end_ev))
            return
        start = time.perf_counter()
        try:
            yield
        finally:
            end = time.perf_counter()
            self._add(lane, name, args, (start - self._t0) * 1e6, (end - start) * 1e6)

    def _add(self, lane: str, name: str, args: dict, ts_us: float, dur_us: float) -> None:
        with self._lock:
            self.events.append({"name": name, "ph": "X", "pid": os.getpid(), "tid": LANES.get(lane, 9),
                                "ts": ts_us, "dur": dur_us, "args": args})

    def _resolve(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        if pending:
            torch.cuda.synchronize()
        for lane, name, args, s, e in pending:      # elapsed_time is in ms
            self._add(lane, name, args, self._ref.elapsed_time(s) * 1e3, s.elapsed_time(e) * 1e3)

    def save(self, path: str) -> None:
        self._resolve()
        meta = [{"name": "thread_name", "ph": "M", "pid": os.getpid(), "tid": tid, "args": {"name": lane}}
                for lane, tid in LANES.items()]
        with open(path, "w") as f:
            json.dump({"traceEvents": meta + self.events, "displayTimeUnit": "ms"}, f)


class NullTracer:
    @contextmanager
    def span(self, lane: str, name: str, **args):
        yield

    def instant(self, lane: str, name: str, **args) -> None:
        pass
