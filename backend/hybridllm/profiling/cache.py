"""Profile on first use: policy="auto" with no hardware_profile looks up this machine's profile in
$HYBRIDLLM_CACHE/profiles/, and measures (then caches) one when there is none.

The key is a fingerprint of what the timings depend on: the CPU model and core count, the GPU and
its memory, the torch and OpenVINO versions, and the model's shape and dtype. A file is written to
a temporary sibling and renamed, so an interrupted run leaves nothing half-written; a file lock
makes concurrent first starts (two Triton instances) measure once: the second waits, then reads.
A corrupt file, or one whose fingerprint is not this machine's, is ignored with a warning.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
from pathlib import Path
from typing import Callable

import openvino as ov
import torch

from ..models.config import ModelConfig
from ..policy import HardwareProfile, ModelShape
from ..runtime.cpu.host_precision import EXACT, HostPrecision
from ..utils import cache_root, file_lock
from .measure import measure
from .store import save_json

log = logging.getLogger("hybridllm")
FORMAT = 2      # bump when the profile's tables change meaning, so older files are re-measured


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def fingerprint(mc: ModelConfig, dtype: str, device: torch.device, host_linear: HostPrecision = EXACT) -> dict:
    gpu = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        gpu = {"name": props.name, "memory": int(props.total_memory)}
    shape = ModelShape.from_config(mc, dtype)
    return {"format": FORMAT, "cpu": cpu_model(), "cores": os.cpu_count(), "gpu": gpu,
            "torch": torch.__version__, "openvino": ov.get_version(), "dtype": dtype, "host_linear": host_linear.label,
            "model": {k: v for k, v in vars(shape).items() if k != "name"}}


def profile_path(fp: dict) -> Path:
    key = hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]
    return cache_root() / "profiles" / f"{key}.json"


def _read(path: Path, fp: dict) -> HardwareProfile | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if data.get("fingerprint") != fp:
            log.warning("hardware profile cache %s was measured elsewhere (fingerprint %s); ignoring it",
                        path, data.get("fingerprint"))
            return None
        return HardwareProfile.from_dict(data["profile"])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        log.warning("hardware profile cache %s is unreadable (%s); measuring again", path, e)
        return None


def cached_profile(mc: ModelConfig, dtype: str, device: torch.device, progress: bool = True,
                   measure_fn: Callable[..., HardwareProfile] | None = None,
                   host_linear: HostPrecision = EXACT) -> tuple[HardwareProfile, str]:
    """(profile, how it was found): this machine's cached profile, or a fresh quick measurement
    (measure_fn: what measures; profiling.measure by default; host_linear: cpu_only's precision)."""
    fp = fingerprint(mc, dtype, device, host_linear)
    path = profile_path(fp)
    prof = _read(path, fp)                          # fast path: no lock, files only ever appear whole
    if prof is not None:
        return prof, f"cached profile {path}"
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path.with_suffix(".lock")):
        prof = _read(path, fp)                      # another process measured while we waited
        if prof is not None:
            return prof, f"cached profile {path} (measured by another process)"
        log.warning("no hardware profile for this machine yet: measuring one (once; cached in %s)", path)
        prof = (measure_fn or measure)(mc, dtype, str(device), progress=progress, quick=True, host_linear=host_linear)
        save_json({"fingerprint": fp, "profile": prof.to_dict()}, path)
        return prof, f"measured now and cached in {path}"
