"""Prometheus metrics through pb_utils.MetricFamily; Triton serves them on its metrics port.

Every metric update is an IPC round trip from the stub to the server, so gauges are only written
when they change and counters once per engine step, not once per token.
"""
from __future__ import annotations

from .engine_loop import HealthReport, StepReport

TTFT_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]
TPOT_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5]

# name -> (kind, help); kinds are pb_utils.MetricFamily attribute names.
FAMILIES = {
    "hybridllm_prompt_tokens_total": ("COUNTER", "Prompt tokens of requests that got their first token (cached ones included)"),
    "hybridllm_generation_tokens_total": ("COUNTER", "Output tokens generated"),
    "hybridllm_time_to_first_token_seconds": ("HISTOGRAM", "Time from request arrival to its first token"),
    "hybridllm_time_per_output_token_seconds": ("HISTOGRAM", "Time between consecutive tokens of a request"),
    "hybridllm_num_requests_running": ("GAUGE", "Requests in the running batch"),
    "hybridllm_num_requests_waiting": ("GAUGE", "Requests queued for admission"),
    "hybridllm_kv_blocks_used": ("GAUGE", "KV cache blocks in use, per tier"),
    "hybridllm_kv_blocks_total": ("GAUGE", "KV cache blocks, per tier"),
    "hybridllm_steps_total": ("COUNTER", "Engine steps, per execution policy that ran them"),
    "hybridllm_preemptions_total": ("COUNTER", "Requests preempted (recomputed later) for KV space"),
    # Prefix caching (vLLM's prefix_cache_queries / prefix_cache_hits, in tokens), per tier.
    "hybridllm_prefix_cache_queries_total": ("COUNTER", "Prompt tokens looked up in the prefix cache, per tier"),
    "hybridllm_prefix_cache_hits_total": ("COUNTER", "Prompt tokens found in the prefix cache (not prefilled), per tier"),
    "hybridllm_kv_blocks_cached": ("GAUGE", "KV blocks nobody holds that keep a cached prefix, per tier"),
    "hybridllm_prefix_cache_evictions_total": ("COUNTER", "Cached prefix blocks evicted for room, per tier"),
    "hybridllm_kv_promotions_total": ("COUNTER", "Host-tier prefix hits copied to the device tier"),
    "hybridllm_kv_demotions_total": ("COUNTER", "Evicted device-tier prefix blocks copied to the host tier"),
    "hybridllm_prefix_cache_host_placements_total": ("COUNTER", "Host-tier prefix hits attended in place "
                                                                "(request placed on the host tier)"),
    # Engine health (written by the loop's watchdog once a second): ready only while the engine thread
    # is alive and the heartbeat is younger than the stall timeout; readers check the age themselves.
    "hybridllm_engine_ready": ("GAUGE", "1 while the engine thread is alive and making progress, else 0"),
    "hybridllm_engine_heartbeat_seconds": ("GAUGE", "Unix time of the engine thread's last progress"),
    "hybridllm_engine_stall_timeout_seconds": ("GAUGE", "No progress for this long makes the engine not ready"),
}
TIERING = ("hybridllm_kv_promotions_total", "hybridllm_kv_demotions_total",
           "hybridllm_prefix_cache_host_placements_total")
HEALTH = ("hybridllm_engine_ready", "hybridllm_engine_heartbeat_seconds", "hybridllm_engine_stall_timeout_seconds")


class ServingMetrics:
    """An engine-loop Observer that writes the families above. `pb` is triton_python_backend_utils."""

    def __init__(self, pb, labels: dict[str, str]):
        self._labels = dict(labels)
        self._families = {
            name: pb.MetricFamily(name=name, description=help_, kind=getattr(pb.MetricFamily, kind))
            for name, (kind, help_) in FAMILIES.items()
        }
        f = self._families
        self._prompt = f["hybridllm_prompt_tokens_total"].Metric(labels=self._labels)
        self._generated = f["hybridllm_generation_tokens_total"].Metric(labels=self._labels)
        self._ttft = f["hybridllm_time_to_first_token_seconds"].Metric(labels=self._labels, buckets=TTFT_BUCKETS)
        self._tpot = f["hybridllm_time_per_output_token_seconds"].Metric(labels=self._labels, buckets=TPOT_BUCKETS)
        self._running = f["hybridllm_num_requests_running"].Metric(labels=self._labels)
        self._waiting = f["hybridllm_num_requests_waiting"].Metric(labels=self._labels)
        self._preemptions = f["hybridllm_preemptions_total"].Metric(labels=self._labels)
        self._health = [f[name].Metric(labels=self._labels) for name in HEALTH]
        self._tiering = {name: f[name].Metric(labels=self._labels) for name in TIERING}
        self._per_label: dict[tuple[str, str], object] = {}   # (family, label value) -> Metric
        self._last: dict[object, float] = {}                  # last value written, per key

    def _labelled(self, family: str, key: str, value: str):
        m = self._per_label.get((family, value))
        if m is None:
            m = self._families[family].Metric(labels={**self._labels, key: value})
            self._per_label[(family, value)] = m
        return m

    def _set(self, metric, value: float) -> None:
        if self._last.get(id(metric)) != value:
            metric.set(value)
            self._last[id(metric)] = value

    def _count(self, key, metric, total: int) -> None:
        """Counters from cumulative engine stats: increment by what is new since last time."""
        delta = total - self._last.get(key, 0)
        if delta > 0:
            metric.increment(delta)
        self._last[key] = total

    def step_done(self, r: StepReport) -> None:
        if r.prompt_tokens:
            self._prompt.increment(r.prompt_tokens)
        if r.generation_tokens:
            self._generated.increment(r.generation_tokens)
        for t in r.ttft_s:
            self._ttft.observe(t)
        for t in r.tpot_s:
            self._tpot.observe(t)
        s = r.stats
        self._set(self._running, s.num_running)
        self._set(self._waiting, s.num_waiting)
        for tier, n in s.blocks_used.items():
            self._set(self._labelled("hybridllm_kv_blocks_used", "tier", tier), n)
        for tier, n in s.blocks_total.items():
            self._set(self._labelled("hybridllm_kv_blocks_total", "tier", tier), n)
        for policy, n in s.steps_by_policy.items():
            self._count(("steps", policy), self._labelled("hybridllm_steps_total", "policy", policy), n)
        self._count("preemptions", self._preemptions, s.num_preemptions)
        for family, per_tier in (("hybridllm_prefix_cache_queries_total", s.prefix_cache_queries),
                                 ("hybridllm_prefix_cache_hits_total", s.prefix_cache_hits),
                                 ("hybridllm_prefix_cache_evictions_total", s.cache_evictions)):
            for tier, n in per_tier.items():
                self._count((family, tier), self._labelled(family, "tier", tier), n)
        for tier, n in s.blocks_cached.items():
            self._set(self._labelled("hybridllm_kv_blocks_cached", "tier", tier), n)
        for family, n in (("hybridllm_kv_promotions_total", s.kv_promotions),
                          ("hybridllm_kv_demotions_total", s.kv_demotions),
                          ("hybridllm_prefix_cache_host_placements_total", s.host_hit_placements)):
            self._count(family, self._tiering[family], n)

    def health(self, r: HealthReport) -> None:
        ready, beat, timeout = self._health
        self._set(ready, 1.0 if r.ready else 0.0)
        self._set(beat, round(r.heartbeat_unix, 1))
        self._set(timeout, r.stall_timeout_s)

    def close(self) -> None:
        # The backend requires Metric objects to go before their MetricFamily.
        self._per_label.clear()
        self._health = []
        self._tiering.clear()
        for name in ("_prompt", "_generated", "_ttft", "_tpot", "_running", "_waiting", "_preemptions"):
            setattr(self, name, None)
        self._families.clear()
