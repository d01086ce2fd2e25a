"""Builds and loads host_native.cpp (our paged decode kernel) with g++: once per source hash, into
$HYBRIDLLM_CACHE/native/, under a lock so concurrent first starts build once. Plain C ABI over ctypes
(which releases the GIL during the call); no torch headers, so a build takes seconds."""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..utils import cache_root, file_lock

SOURCE = Path(__file__).with_name("host_native.cpp")
HEADERS = (Path(__file__).with_name("host_native_isa.h"),)
# The one source compiled three times: AVX-512 and AVX2 kernels, then the scalar kernel + dispatcher + writer.
VARIANTS = (("avx512", ["-DHL_BUILD_AVX512", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma", "-mf16c"]),
            ("avx2", ["-DHL_BUILD_AVX2", "-mavx2", "-mfma", "-mf16c"]),
            ("base", []))
FLAGS = ["-O3", "-fopenmp", "-fPIC", "-std=c++17", "-fno-math-errno"]
ISAS = {"auto": 0, "scalar": 1, "avx2": 2, "avx512": 3}
ISA_NAMES = {v: k for k, v in ISAS.items()}
FORMATS = {"f32": 0, "f16": 1, "bf16": 2, "u8": 3}

_p, _i, _f = ctypes.c_void_p, ctypes.c_int, ctypes.c_float


def compiler() -> str:
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not cxx:
        raise RuntimeError("the native host attention needs a C++ compiler (g++); none on PATH (set CXX)")
    return cxx


def build(out_dir: Path | None = None) -> Path:
    """The shared library for this source, built if missing; returns its path."""
    src = SOURCE.read_bytes() + b"".join(h.read_bytes() for h in HEADERS)
    cxx = compiler()
    key = hashlib.sha256(src + " ".join(FLAGS).encode() + cxx.encode()).hexdigest()[:16]
    out_dir = Path(out_dir or cache_root() / "native")
    lib = out_dir / f"host_native-{key}.so"
    if lib.exists():
        return lib
    out_dir.mkdir(parents=True, exist_ok=True)
    with file_lock(out_dir / ".build.lock"):
        if lib.exists():
            return lib
        with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
            objs = []
            for name, flags in VARIANTS:
                obj = Path(tmp) / f"{name}.o"
                _run([cxx, *FLAGS, *flags, "-c", str(SOURCE), "-o", str(obj)])
                objs.append(str(obj))
            tmp_lib = Path(tmp) / lib.name
            _run([cxx, "-shared", "-fopenmp", *objs, "-o", str(tmp_lib)])
            os.replace(tmp_lib, lib)          # atomic: a reader sees the whole library or none
    return lib


def _run(cmd: list[str]) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"building the native host attention failed ({' '.join(cmd[:2])} ...): "
                           f"{r.stderr.strip()[-2000:]}")


@functools.lru_cache(maxsize=1)
def library() -> ctypes.CDLL:
    lib = ctypes.CDLL(str(build()))
    lib.hl_best_isa.restype = _i
    lib.hl_decode.restype = _i
    lib.hl_decode.argtypes = [_i, _i, _i, _i, _i, _i, _i, _i, _i, _i, _f, _p, _p, _p, _p, _p, _p]
    lib.hl_write.restype = None
    lib.hl_write.argtypes = [_i, _i, _i, _i, _i, _p, _p, _p, _p, _p]
    return lib


def best_isa() -> str:
    """The fastest kernel this CPU runs: "avx512" | "avx2" | "scalar"."""
    return ISA_NAMES[library().hl_best_isa()]
