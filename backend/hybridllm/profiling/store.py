"""Hardware profiles on disk: load a JSON file or a reference name, save atomically.

The I/O half of policy.HardwareProfile (which stays pure: to_dict / from_dict).
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from .. import policy
from ..policy import HardwareProfile
from ..policy.reference import SPECS, build

PROFILE_DIR = Path(policy.__file__).parent / "profiles"    # the reference profiles as JSON, for reading


def load_profile(spec: str | os.PathLike) -> HardwareProfile:
    """A profile JSON file, or a reference profile's name (h100-sxm-spr, ...)."""
    p = Path(spec)
    if p.is_file():
        try:
            data = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"hardware profile {p}: not valid JSON ({e})") from None
        return HardwareProfile.from_dict(data)
    for s in SPECS:
        if s.name == str(spec):
            return build(s)
    raise FileNotFoundError(f"hardware_profile: {str(spec)!r} is neither a profile JSON file nor a reference "
                            f"profile name ({', '.join(s.name for s in SPECS)})")


def save_profile(profile: HardwareProfile, path: str | os.PathLike) -> None:
    save_json(profile.to_dict(), path)


def save_json(data: dict, path: str | os.PathLike) -> None:
    """Writes to a temporary file beside `path` and renames it: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_reference_files() -> None:
    """Rewrites policy/profiles/*.json from the specs (`python -m hybridllm.profiling.store`)."""
    for s in SPECS:
        save_profile(build(s), PROFILE_DIR / f"{s.name}.json")
        print(PROFILE_DIR / f"{s.name}.json")


if __name__ == "__main__":
    write_reference_files()
