"""Small helpers shared across packages: ceiling division and the host's memory (from /proc/meminfo)."""
from __future__ import annotations


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
