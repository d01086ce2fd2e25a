"""Small helpers shared across packages: ceiling division, the host's memory (from /proc/meminfo),
the cache folder and a cross-process file lock."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # non-POSIX: no cross-process lock; atomic renames still protect readers
    fcntl = None


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _meminfo(key: str) -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def mem_available() -> int | None:
    """Bytes the kernel could hand out now without swapping; None where /proc/meminfo is missing."""
    return _meminfo("MemAvailable")


def mem_total() -> int | None:
    return _meminfo("MemTotal")


def check_host_kv_bytes(host_kv_bytes: int) -> None:
    """A host KV tier is allocated up front: refuse one larger than the free host memory, by name."""
    avail = mem_available()
    if avail is not None and host_kv_bytes > avail:
        raise ValueError(f"host_kv_bytes ({host_kv_bytes}) is larger than the free host memory ({avail})")


def cache_root() -> Path:
    """$HYBRIDLLM_CACHE, else ~/.cache/hybridllm: converted models, compiled graphs, profiles."""
    env = os.environ.get("HYBRIDLLM_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "hybridllm"


@contextlib.contextmanager
def file_lock(lock_path: Path) -> Iterator[None]:
    """Holds an exclusive lock on lock_path (created if missing) across processes."""
    with open(lock_path, "a+") as f:
        if fcntl is not None:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # blocks while another process holds it
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
