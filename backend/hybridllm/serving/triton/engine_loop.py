"""EngineLoop: runs the single-threaded LLMEngine in its own thread.

Other threads only `submit` and `abort`; both put work in a queue and return at once, so Triton's
`execute` never waits for generation and requests arriving together are batched by the engine.
The loop owns the engine: it adds queued requests, polls cancellation, steps, and queues every
output for the request's Sink; a second thread (the outbox) delivers them and the metrics in
order. No Triton import: the sink and the observer are injected.
"""
from __future__ import annotations

import ctypes
import dataclasses
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

from ...engine import EngineStats, LLMEngine, RequestOutput
from ...sampling_params import SamplingParams
from .delivery import OnceSink, Outbox, Sink, cancelled, fail_quietly
from .options import FAULT_PROMPT, FAULTS

log = logging.getLogger("hybridllm.serving")

# Why a request ended without a normal finish; the adapter maps these to Triton error codes.
INVALID, CANCELLED, INTERNAL, UNAVAILABLE = "invalid", "cancelled", "internal", "unavailable"


# glibc keeps the heap pages that steps of varying shapes freed (most of the soak's RSS growth); handing
# them back costs a few ms, so at most this often, between steps, and only after work.
TRIM_EVERY_S = 30.0


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):     # not glibc
        return None


class _InjectedDeath(BaseException):
    """Not an Exception: the loop's guard must not catch it, the thread must really end."""


class Observer(Protocol):
    def step_done(self, report: "StepReport") -> None: ...
    def health(self, report: "HealthReport") -> None: ...


@dataclass(frozen=True)
class Submission:
    request_id: str
    prompt: str | None
    prompt_token_ids: tuple[int, ...] | None
    params: SamplingParams
    sink: Sink
    arrival: float = field(default_factory=time.monotonic)   # for time to first token


@dataclass(frozen=True)
class StepReport:
    """What happened in one loop iteration, for metrics."""
    stats: EngineStats
    prompt_tokens: int                  # prompt tokens of requests that got their first token
    generation_tokens: int
    ttft_s: tuple[float, ...]           # one per request that got its first token
    tpot_s: tuple[float, ...]           # one per later token: time since that request's previous one


@dataclass(frozen=True)
class HealthReport:
    """The watchdog's view, once a second: readers outside the process compare heartbeat_unix with their
    clock, so a frozen process (whose reports stop) reads as unhealthy too."""
    ready: bool
    heartbeat_unix: float               # wall-clock time of the engine thread's last progress
    stall_timeout_s: float
    reason: str | None                  # why not ready


@dataclass
class _Live:
    sub: Submission
    last_token: float | None = None


class EngineLoop:
    """`make_engine` runs on the loop thread, so all torch work happens on one thread. Measured
    here: once another thread (Triton's) had run torch ops, this thread's batch-16 steps were ~25%
    slower; likely a second OpenMP team, which makes libgomp stop spin-waiting (more OpenMP
    threads than cores)."""

    def __init__(self, make_engine: Callable[[], LLMEngine], observer: Observer | None = None,
                 cancel_poll_s: float = 0.1, stall_timeout_s: float = 60.0, fault_injection: str = ""):
        if fault_injection not in FAULTS:
            raise ValueError(f"fault_injection must be one of {FAULTS}, got {fault_injection!r}")
        self._make_engine = make_engine
        # Health: the thread stamps _beat each iteration and wakes at least every _tick when idle, so
        # a beat older than stall_timeout_s means a step (or a send) is stuck.
        self.stall_timeout_s = float(stall_timeout_s)
        self._tick = min(1.0, self.stall_timeout_s / 4)
        self._beat = time.monotonic()
        self._fault = fault_injection
        self._released = threading.Event()  # ends an injected stall at shutdown
        self._watchdog: threading.Thread | None = None
        self._orphans: list[Submission] = []
        self.engine: LLMEngine | None = None
        self.observer = observer
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        # is_cancelled() is an IPC round trip per request (~0.1 ms here): polling every request at
        # every step costs ~2% of a batch-16 step on 2 cores; a client does not notice 0.1 s.
        self._cancel_poll_s = cancel_poll_s
        self._next_cancel_poll = 0.0
        self._cv = threading.Condition()
        self._inbox: list[Submission] = []
        self._aborts: list[str] = []
        self._stopping = False
        self._live: dict[str, _Live] = {}  # loop thread only
        self._dirty = False                # a request ended outside step(): metrics need a refresh
        self._thread = threading.Thread(target=self._run, name="hybridllm-engine", daemon=True)
        self._outbox: Outbox | None = None

    # -- any thread --------------------------------------------------------------

    def start(self) -> "EngineLoop":
        """Builds the engine on the loop thread; raises what building it raised."""
        self._outbox = Outbox()
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            self._outbox.close()
            raise self._start_error
        self._watchdog = threading.Thread(target=self._watch, name="hybridllm-watchdog", daemon=True)
        self._watchdog.start()
        return self

    def submit(self, sub: Submission) -> None:
        sub = dataclasses.replace(sub, sink=OnceSink(sub.sink))
        with self._cv:
            if self._stopping:
                fail_quietly(sub.sink, UNAVAILABLE, "the model is shutting down")
                return
            reason = self.health()
            if reason is not None:  # a load balancer retries elsewhere; a stuck queue would only grow
                fail_quietly(sub.sink, UNAVAILABLE, f"the model is not ready: {reason}")
                return
            self._inbox.append(sub)
            self._cv.notify()

    def abort(self, request_id: str) -> None:
        with self._cv:
            self._aborts.append(request_id)
            self._cv.notify()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stopping

    def health(self) -> str | None:
        """None when the engine is healthy, else why not (the thread died, or no progress past the deadline)."""
        if self._stopping:
            return "the model is shutting down"
        if not self._thread.is_alive():
            return "the engine thread has died"
        stalled = time.monotonic() - self._beat
        if stalled > self.stall_timeout_s:
            return (f"the engine made no progress for {stalled:.0f} s "
                    f"(engine_stall_timeout_s = {self.stall_timeout_s:g})")
        return None

    def shutdown(self, timeout: float = 30.0) -> None:
        """Fails every queued and running request (UNAVAILABLE) and stops the thread."""
        with self._cv:
            self._stopping = True
            self._cv.notify()
        self._released.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # -- loop thread -------------------------------------------------------------

    def _run(self) -> None:
        try:
            self.engine = self._make_engine()
            self._beat = time.monotonic()   # a long build (conversion, profiling) is not a stall
        except BaseException as e:  # handed to start(), which raises it in the caller's thread
            self._start_error = e
            return
        finally:
            self._started.set()
        self._report(0, 0, [], [])  # the idle state, so the metrics show before any traffic
        trim, trimmed, worked = _malloc_trim(), time.monotonic(), False
        while True:
            self._beat = time.monotonic()
            if worked and trim is not None and self._beat - trimmed > TRIM_EVERY_S:
                trim(0)
                trimmed, worked = time.monotonic(), False
            with self._cv:
                if not (self._inbox or self._aborts or self._stopping or self._live):
                    self._cv.wait(self._tick)
                inbox, self._inbox = self._inbox, []
                aborts, self._aborts = self._aborts, []
                stopping = self._stopping
            if stopping:
                for sub in inbox:
                    self._outbox.put(fail_quietly, sub.sink, UNAVAILABLE, "the model is shutting down")
                for rid in list(self._live):
                    self._end(rid, UNAVAILABLE, "the model is shutting down")
                self._outbox.close()  # everything queued is sent before the model goes away
                return
            worked = worked or bool(inbox or self._live)
            try:
                self._iterate(inbox, aborts)
            except Exception as e:  # a bug must not strand clients: fail what is in flight, go on
                log.exception("engine loop iteration failed")
                for rid in list(self._live):
                    self._end(rid, INTERNAL, f"engine error: {type(e).__name__}: {e}")

    def _iterate(self, inbox: list[Submission], aborts: list[str]) -> None:
        for sub in inbox:
            if self._fault and sub.prompt == FAULT_PROMPT:
                self._inject(sub)
                continue
            try:
                self.engine.add_request(sub.request_id, sub.prompt, sub.params,
                                        prompt_token_ids=None if sub.prompt_token_ids is None
                                        else list(sub.prompt_token_ids))
            except (ValueError, TypeError) as e:  # add_request changed nothing
                field_name = "input_ids" if sub.prompt_token_ids is not None else "text_input"
                self._outbox.put(fail_quietly, sub.sink, INVALID, f"{field_name}: {e}")
                continue
            except Exception as e:
                log.exception("add_request(%s) failed", sub.request_id)
                self._outbox.put(fail_quietly, sub.sink, INTERNAL, f"engine error: {type(e).__name__}: {e}")
                continue
            self._live[sub.request_id] = _Live(sub)
        for rid in aborts:
            if rid in self._live:
                self._end(rid, CANCELLED, "request was cancelled")
        if time.monotonic() >= self._next_cancel_poll:
            self._next_cancel_poll = time.monotonic() + self._cancel_poll_s
            for rid, live in list(self._live.items()):
                if cancelled(live.sub.sink):
                    log.info("request %s cancelled by the client", rid)
                    self._end(rid, CANCELLED, "request was cancelled")

        if not self.engine.has_unfinished_requests():
            if self._live:  # cannot happen; but never leave a client waiting or the loop spinning
                log.error("live requests without engine work: %s", sorted(self._live))
                for rid in list(self._live):
                    self._end(rid, INTERNAL, "request was lost by the engine")
            if inbox or aborts or self._dirty:
                self._report(0, 0, [], [])   # blocks freed by aborts and cancels show at once
            return
        outputs = self.engine.step()
        now = time.monotonic()
        ttft, tpot, generated, prompt_tokens = [], [], 0, 0
        for out in outputs:
            live = self._live.get(out.request_id)
            if live is None:
                continue
            generated += len(out.delta_token_ids)
            if live.last_token is None:
                ttft.append(now - live.sub.arrival)
                prompt_tokens += out.num_prompt_tokens
            else:
                tpot.append(now - live.last_token)
            live.last_token = now
            if out.finish_reason == "error":  # the engine ended this request alone; the rest go on
                self._live.pop(out.request_id)
                message = f"engine error: {getattr(out, 'error', None) or 'unknown'}"
                self._outbox.put(fail_quietly, live.sub.sink, INTERNAL, message)
                continue
            self._outbox.put(self._deliver, live.sub.sink, out)
            if out.finished:
                del self._live[out.request_id]
        self._report(prompt_tokens, generated, ttft, tpot)

    def _inject(self, sub: Submission) -> None:
        log.error("fault injection: %s", self._fault)
        self._orphans.append(sub)               # the watchdog ends it, as it ends the running requests
        if self._fault == "engine_stall":
            self._released.wait()               # until shutdown, as a stuck kernel would
        else:
            raise _InjectedDeath("fault injection: engine_death")

    def _watch(self) -> None:
        """Watchdog thread: reports health once a tick. While the engine is not ready it refuses the queue
        and ends the running requests with an error (a stuck request would also hold up Triton's
        shutdown); their later outputs are dropped by OnceSink and the loop aborts them if it wakes."""
        was_ready, ended = True, set()
        while not self._stopping:
            reason = self.health()
            if (reason is None) != was_ready:
                (log.info if reason is None else log.error)("engine %s", "ready again" if reason is None
                                                            else f"not ready: {reason}")
                was_ready = reason is None
            if reason is not None and not self._stopping:
                with self._cv:
                    inbox, self._inbox = self._inbox, []
                for sub in inbox:
                    self._outbox.put(fail_quietly, sub.sink, UNAVAILABLE, f"the model is not ready: {reason}")
                dead = not self._thread.is_alive()
                for rid, sub in _snapshot(self._live, self._orphans):
                    if rid not in ended:
                        ended.add(rid)
                        self._outbox.put(fail_quietly, sub.sink, INTERNAL, f"engine error: {reason}")
                        if not dead:
                            self.abort(rid)
            if self.observer is not None and hasattr(self.observer, "health"):
                beat_unix = time.time() - (time.monotonic() - self._beat)
                report = HealthReport(reason is None, beat_unix, self.stall_timeout_s, reason)
                self._outbox.put(self._observe_health, report)
            self._released.wait(self._tick)

    def _observe_health(self, report: HealthReport) -> None:
        try:
            self.observer.health(report)
        except Exception:
            log.exception("health metrics update failed")

    def _end(self, rid: str, kind: str, message: str) -> None:
        self._dirty = True
        live = self._live.pop(rid)
        self.engine.abort_request(rid)  # frees its KV blocks
        self._outbox.put(fail_quietly, live.sub.sink, kind, message)

    def _deliver(self, sink: Sink, out: RequestOutput) -> None:
        """Outbox thread. A broken sender ends the request: stop spending engine work on it."""
        try:
            sink.output(out)
        except Exception:
            log.exception("sending output of %s failed; aborting it", out.request_id)
            if not out.finished:
                self.abort(out.request_id)  # the loop ends it (and tries to send the error)

    def _report(self, prompt_tokens: int, generated: int, ttft: list, tpot: list) -> None:
        self._dirty = False
        if self.observer is not None:  # stats now, on this thread; the IPC writes on the outbox's
            report = StepReport(self.engine.stats(), prompt_tokens, generated, tuple(ttft), tuple(tpot))
            self._outbox.put(self._observe, report)

    def _observe(self, report: StepReport) -> None:
        try:
            self.observer.step_done(report)
        except Exception:  # metrics must never stop generation
            log.exception("metrics update failed")


def _snapshot(live: dict, orphans: list) -> list[tuple[str, Submission]]:
    """The running requests, read from the watchdog while the loop thread may change the dict."""
    for _ in range(10):
        try:
            return [(rid, lv.sub) for rid, lv in list(live.items())] + [(o.request_id, o) for o in orphans]
        except RuntimeError:  # changed during the copy; the loop is running, try again
            time.sleep(0.001)
    return []
