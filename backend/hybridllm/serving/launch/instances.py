"""Several engines in one server: instance_group { count: N } gives N stub processes, each with its own
engine and KV tiers. They share the machine's cores, so each instance takes an equal, disjoint share:
its process is pinned to those cores (when the affinity mask has enough) and torch and OpenVINO get
that many threads, instead of N engines each spinning a team over every core.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re

from ...config import EngineConfig

log = logging.getLogger("hybridllm.serving")


@dataclasses.dataclass(frozen=True)
class CpuShare:
    threads: int | None                 # None: one instance, leave the defaults (all cores)
    cpus: tuple[int, ...] = ()          # pinned to these; empty: not pinned


def instance_index(instance_name: str) -> int | None:
    """Triton names instances <group>_<index>, e.g. hybrid_llm_0_1."""
    m = re.search(r"_(\d+)$", instance_name or "")
    return int(m.group(1)) if m else None


def cpu_share(count: int, instance_name: str, cpus: list[int] | None = None) -> CpuShare:
    if count <= 1:
        return CpuShare(None)
    cpus = sorted(os.sched_getaffinity(0)) if cpus is None else sorted(cpus)
    per = max(1, len(cpus) // count)
    index = instance_index(instance_name)
    if index is None or per * count > len(cpus):
        return CpuShare(per)            # fewer cores than instances: threads only, let the OS schedule
    return CpuShare(per, tuple(cpus[index * per:(index + 1) * per]))


def apply_share(config: EngineConfig, share: CpuShare) -> EngineConfig:
    """Pins this process and sets the thread counts; returns the config with host_threads filled in."""
    if share.threads is None:
        return config
    if share.cpus:
        os.sched_setaffinity(0, share.cpus)
    from ...ov_common import core  # noqa: PLC0415 - OpenVINO only once Triton loads us
    # The default for every graph compiled later without its own INFERENCE_NUM_THREADS (cpu_only's).
    core().set_property("CPU", {"INFERENCE_NUM_THREADS": share.threads})
    log.info("instance share: %d threads, cpus %s", share.threads, list(share.cpus) or "not pinned")
    if config.host_threads is None:
        config = dataclasses.replace(config, host_threads=share.threads)
    return config
