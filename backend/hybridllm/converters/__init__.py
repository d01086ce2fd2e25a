"""Model conversion: a GGUF file or a Hugging Face folder becomes a plain HF folder.

The output folder holds `config.json`, a single float `model.safetensors`, `tokenizer.json`,
`tokenizer_config.json` and (when known) `generation_config.json`, so that
`transformers.AutoModelForCausalLM` / `AutoTokenizer` load it offline.
"""

from __future__ import annotations

import os
from pathlib import Path

from ._common import UnsupportedModelError, atomic_output_dir

__all__ = ["convert", "UnsupportedModelError"]


def _is_gguf(path: Path) -> bool:
    if path.suffix.lower() == ".gguf":
        return True
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


def convert(src: str | os.PathLike, out: str | os.PathLike, *, progress: bool = True,
            overwrite: bool = False) -> Path:
    """Convert `src` (a .gguf file or an HF folder) into the HF folder `out`; returns `out`.

    The files are written into a hidden temp sibling of `out` that is renamed into place only
    once complete, so `out` is never half-written. `out` must not exist (or be an empty folder)
    unless `overwrite` is true.
    """
    src, out = Path(src).expanduser(), Path(out).expanduser()
    if not src.exists():
        raise FileNotFoundError(f"conversion source {src} does not exist")
    if src.resolve() == out.resolve():
        raise ValueError(f"conversion output {out} must differ from the source")
    if src.is_dir():
        from .hf_folder import convert_hf_folder as run
    elif _is_gguf(src):
        from .gguf_to_hf import convert_gguf as run
    else:
        raise UnsupportedModelError(f"{src} is neither a .gguf file nor a Hugging Face model folder")
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        run(src, tmp, progress=progress)
    return out
