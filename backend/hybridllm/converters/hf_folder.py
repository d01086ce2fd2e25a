"""Hugging Face folder -> Hugging Face folder with one `model.safetensors`.

Shards are merged by copying raw bytes (dtype unchanged); config and tokenizer files are copied.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ._common import UnsupportedModelError
from .safetensors_io import TensorEntry, copy_range, read_header, write_safetensors

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")

# Everything else small in the folder (tokenizer files, generation config, license...) is copied.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".ckpt")


def _shards(src: Path) -> list[Path]:
    index = src / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        shards = [src / name for name in dict.fromkeys(weight_map.values())]
        missing = [s.name for s in shards if not s.is_file()]
        if missing:
            raise FileNotFoundError(f"{index} names shard(s) missing from {src}: {', '.join(missing)}")
        return shards
    shards = sorted(src.glob("*.safetensors"))
    if shards:
        return shards
    if list(src.glob("pytorch_model*.bin")) or (src / "pytorch_model.bin.index.json").exists():
        raise UnsupportedModelError(
            f"{src} holds only PyTorch pickle weights (pytorch_model*.bin); they are not loaded here because "
            f"unpickling can run code. Re-save the model with safetensors (save_pretrained(safe_serialization=True))"
        )
    raise FileNotFoundError(f"{src} has no *.safetensors weights")


def _entries(shards: list[Path]) -> list[TensorEntry]:
    entries: dict[str, TensorEntry] = {}
    for shard in shards:
        for name, t in read_header(shard).items():
            if name in entries:
                raise ValueError(f"tensor {name!r} appears in more than one shard (second: {shard.name})")
            entries[name] = TensorEntry(name, t.dtype, t.shape, copy_range(shard, t.begin, t.end))
    return list(entries.values())


def _ensure_tokenizer_json(src: Path, out: Path) -> None:
    if (out / "tokenizer.json").is_file():
        return
    try:  # slow-tokenizer-only folders: let transformers build tokenizer.json, if it is installed
        from transformers import AutoTokenizer
    except ImportError:
        raise UnsupportedModelError(
            f"{src} has no tokenizer.json; install transformers to build one from its other tokenizer files"
        ) from None
    AutoTokenizer.from_pretrained(str(src), local_files_only=True).save_pretrained(str(out))
    if not (out / "tokenizer.json").is_file():
        raise UnsupportedModelError(f"could not build tokenizer.json for {src}")


def convert_hf_folder(src: Path, out: Path, *, progress: bool = True) -> None:
    """Write the merged copy of HF folder `src` into the (existing, empty) folder `out`."""
    config_path = src / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{src} is not a Hugging Face model folder: config.json is missing ({config_path})")
    config = json.loads(config_path.read_text())
    archs = config.get("architectures") or []
    if len(archs) != 1 or archs[0] not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedModelError(
            f"architecture {archs or config.get('model_type')!r} in {config_path} is not supported; "
            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    shards = _shards(src)
    write_safetensors(out / "model.safetensors", _entries(shards), progress=progress, desc=f"merge {src.name}")
    for f in sorted(src.iterdir()):
        if f.is_file() and not f.name.startswith(".") and not f.name.endswith(_WEIGHT_SUFFIXES) \
                and f.name != "model.safetensors.index.json" and not f.name.startswith("pytorch_model"):
            shutil.copy2(f, out / f.name)
    _ensure_tokenizer_json(src, out)
