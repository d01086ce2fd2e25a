"""How outputs leave the engine thread: a request's Sink, the outbox thread that delivers to sinks in
order, and the guard that lets a request end once (the watchdog may end it before the engine does)."""
from __future__ import annotations

import logging
import queue
import threading
from typing import Protocol

from ...engine import RequestOutput

log = logging.getLogger("hybridllm.serving")


class Sink(Protocol):
    """Where one request's results go. `output` / `fail` are called from one thread, in order."""

    def output(self, out: RequestOutput) -> None: ...      # the last one has out.finished
    def fail(self, kind: str, message: str) -> None: ...   # final; no output follows
    def is_cancelled(self) -> bool: ...


class Outbox:
    """Delivers responses and metrics on a thread of its own, in order. Each send is an IPC
    round trip to the server; here it overlaps the next engine step instead of delaying it."""

    def __init__(self):
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="hybridllm-outbox", daemon=True)
        self._thread.start()

    def put(self, fn, *args) -> None:
        self._q.put((fn, args))

    def close(self, timeout: float = 30.0) -> None:
        self._q.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while (item := self._q.get()) is not None:
            fn, args = item
            try:
                fn(*args)
            except Exception:  # each callable handles its own errors; this is the last guard
                log.exception("outbox: %s failed", getattr(fn, "__name__", fn))


class OnceSink:
    """Passes on outputs until the final one (or a failure) and drops everything after it, so the
    watchdog may end a stuck request while the engine might still answer it later. Used from the
    outbox thread only (and from submit() before the request is queued)."""

    def __init__(self, sink: Sink):
        self._sink, self._done = sink, False

    def output(self, out: RequestOutput) -> None:
        if not self._done:
            self._done = out.finished
            self._sink.output(out)

    def fail(self, kind: str, message: str) -> None:
        if not self._done:
            self._done = True
            self._sink.fail(kind, message)

    def is_cancelled(self) -> bool:
        return self._sink.is_cancelled()


def fail_quietly(sink: Sink, kind: str, message: str) -> None:
    try:
        sink.fail(kind, message)
    except Exception:  # nothing more can reach this client; the loop must go on
        log.exception("sending a final %s error failed", kind)


def cancelled(sink: Sink) -> bool:
    try:
        return sink.is_cancelled()
    except Exception:
        return False
