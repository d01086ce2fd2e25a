"""A Chrome-trace recorder (open the JSON in Perfetto or chrome://tracing)."""
from __future__ import annotations

import json
import os
import threading
import time
from contextlib import contextmanager

LANES = {"device": 1, "host": 2}


class Tracer:
    def __init__(self):
        self.events: list[dict] = []
        self._lock = threading.Lock()
        self._t0 = time.perf_counter()

    @contextmanager
    def span(self, lane: str, name: str, **args):
        start = time.perf_counter()
        try:
            yield
        finally:
            end = time.perf_counter()
            with self._lock:
                self.events.append({"name": name, "ph": "X", "pid": os.getpid(), "tid": LANES.get(lane, 3),
                                    "ts": (start - self._t0) * 1e6, "dur": (end - start) * 1e6, "args": args})

    def save(self, path: str) -> None:
        meta = [{"name": "thread_name", "ph": "M", "pid": os.getpid(), "tid": tid, "args": {"name": lane}}
                for lane, tid in LANES.items()]
        with open(path, "w") as f:
            json.dump({"traceEvents": meta + self.events, "displayTimeUnit": "ms"}, f)


class NullTracer:
    @contextmanager
    def span(self, lane: str, name: str, **args):
        yield
