"""Which hardware profile an engine plans with: the one named, this machine's cached one, or none."""
from __future__ import annotations

from ..config import EngineConfig
from ..models.config import ModelConfig
from ..policy import HardwareProfile
from ..profiling.cache import cached_profile
from ..profiling.store import load_profile
from ..runtime.spec import compute_device
from ..runtime.cpu.host_precision import HostPrecision


def find_profile(config: EngineConfig, mc: ModelConfig, host_linear: HostPrecision) -> tuple[HardwareProfile | None, str]:
    """(profile, how it was found). hardware_profile: a JSON path or reference name is loaded; "none"
    means no profile (auto's fixed rule); unset, policy auto uses this machine's cached profile and
    measures one on first use. Forced policies plan nothing, except NEO when it is given a profile."""
    spec = config.hardware_profile
    if spec == "none":
        return None, "hardware_profile=none: no profile"
    if spec is not None:
        return load_profile(spec), f"profile {spec}"
    if config.policy != "auto":
        return None, ""
    return cached_profile(mc, config.dtype, compute_device(config), host_linear=host_linear)
