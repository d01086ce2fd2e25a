"""GGUF file -> Hugging Face folder (config.json, model.safetensors in float32, tokenizer files).

Supported architectures: `llama` (also Mistral GGUFs, which llama.cpp writes as llama) and `qwen2`.
Tensors are dequantized with `gguf.quants.dequantize`, one at a time, into model.safetensors.
The codes of Q4_0/Q4_1/Q8_0 matrices are also kept as they are (converters/gguf_quant.py), so the
CPU data plane can run them quantized.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize

from ._common import UnsupportedModelError
from .gguf_quant import kept, write_quantized
from .gguf_tokenizer import build_tokenizer
from .safetensors_io import TensorEntry, write_safetensors

SUPPORTED_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
_BLOCK_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")


class GGUFMeta:
    """Read-only view of a GGUF file's key/value metadata."""

    def __init__(self, reader: GGUFReader):
        self._fields = reader.fields

    def get(self, key: str, default=None):
        field = self._fields.get(key)
        return default if field is None else field.contents()

    def require(self, key: str):
        value = self.get(key)
        if value is None:
            raise UnsupportedModelError(f"GGUF metadata lacks required key {key!r}")
        return value


def unpermute_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation (interleaved rope pairs -> HF's half-split layout).

    w: [rows, cols] or [rows] (bias); rows = n_head * head_dim.
    """
    rows = w.shape[0]
    rest = w.shape[1:]
    return w.reshape(n_head, rows // n_head // 2, 2, *rest).swapaxes(1, 2).reshape(w.shape)


def _dequantize(t) -> np.ndarray:
    """ReaderTensor -> float32 array in HF orientation ([out_features, in_features] for matrices)."""
    if t.tensor_type == GGMLQuantizationType.F64:
        arr = np.asarray(t.data, dtype=np.float32)
    else:
        arr = dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
    return arr.reshape(tuple(int(d) for d in reversed(t.shape)))


def _check_dequantizable(t) -> None:
    # Probe one row so an unsupported type fails before we write gigabytes.
    if t.tensor_type == GGMLQuantizationType.F64:
        return
    probe = t.data[:1] if t.data.ndim > 1 else t.data
    try:
        dequantize(probe, t.tensor_type)
    except NotImplementedError:
        raise UnsupportedModelError(
            f"tensor {t.name!r} uses quantization type {t.tensor_type.name}, which the gguf package cannot "
            f"dequantize; re-quantize the model to e.g. Q8_0, Q4_K or F16"
        ) from None


def _llama3_rope_scaling(factors: np.ndarray, theta: float, rot_dim: int) -> dict:
    """Recover HF's llama3 rope_scaling from llama.cpp's `rope_freqs` tensor (per-frequency divisors).

    The GGUF stores only the resulting divisors; we check them against the published Llama 3.x
    parameters and refuse anything else rather than guess.
    """
    factor = _f32(factors.max())
    low, high, orig = 1.0, 4.0, 8192
    freqs = 1.0 / theta ** (np.arange(0, rot_dim, 2, dtype=np.float64) / rot_dim)
    wavelen = 2 * math.pi / freqs
    smooth = (orig / wavelen - low) / (high - low)
    expect = np.where(wavelen < orig / high, 1.0,
                      np.where(wavelen > orig / low, factor, 1.0 / ((1 - smooth) / factor + smooth)))
    if factors.shape != expect.shape or not np.allclose(factors, expect, rtol=1e-4):
        raise UnsupportedModelError("GGUF has a rope_freqs tensor that does not match llama3 rope scaling")
    return {"rope_type": "llama3", "factor": factor, "low_freq_factor": low,
            "high_freq_factor": high, "original_max_position_embeddings": orig}


def _rope_scaling(meta: GGUFMeta, arch: str) -> dict | None:
    kind = meta.get(f"{arch}.rope.scaling.type")
    factor = meta.get(f"{arch}.rope.scaling.factor")
    if kind in (None, "none") or factor is None:
        return None
    if kind == "linear":
        return {"rope_type": "linear", "factor": _f32(factor)}
    if kind == "yarn":
        out = {"rope_type": "yarn", "factor": _f32(factor)}
        orig = meta.get(f"{arch}.rope.scaling.original_context_length")
        if orig is not None:
            out["original_max_position_embeddings"] = int(orig)
        return out
    raise UnsupportedModelError(f"rope scaling type {kind!r} is not supported (linear, yarn)")


def _f32(value) -> float:
    """GGUF stores these as float32; keep the short decimal (1e-05, not 9.99999974e-06)."""
    return float(str(np.float32(value)))


def _hf_config(meta: GGUFMeta, arch: str, tensors: dict, vocab_size: int, special: dict) -> dict:
    p = f"{arch}."
    if (meta.get(p + "expert_count") or 0) > 0 or any(".ffn_gate_exps." in n for n in tensors):
        raise UnsupportedModelError(f"mixture-of-experts {arch} GGUFs are not supported")
    hidden = int(meta.require(p + "embedding_length"))
    n_head = meta.require(p + "attention.head_count")
    n_kv = meta.get(p + "attention.head_count_kv", n_head)
    if isinstance(n_head, list) or isinstance(n_kv, list):
        raise UnsupportedModelError("per-layer head counts are not supported")
    head_dim = int(meta.get(p + "attention.key_length", hidden // n_head))
    rot = meta.get(p + "rope.dimension_count", head_dim)
    if rot != head_dim:
        raise UnsupportedModelError(f"partial rotary embeddings (rope dim {rot} < head dim {head_dim}) are not supported")
    theta = _f32(meta.get(p + "rope.freq_base", 10000.0 if arch == "llama" else 1000000.0))
    rope_scaling = _rope_scaling(meta, arch)
    if "rope_freqs.weight" in tensors:
        rope_scaling = _llama3_rope_scaling(_dequantize(tensors["rope_freqs.weight"]), theta, head_dim)
    n_layer = int(meta.require(p + "block_count"))
    cfg = {
        "architectures": [SUPPORTED_ARCHITECTURES[arch]],
        "model_type": arch,
        "hidden_size": hidden,
        "intermediate_size": int(meta.require(p + "feed_forward_length")),
        "num_hidden_layers": n_layer,
        "num_attention_heads": int(n_head),
        "num_key_value_heads": int(n_kv),
        "head_dim": head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": _f32(meta.get(p + "attention.layer_norm_rms_epsilon", 1e-6)),
        "max_position_embeddings": int(meta.get(p + "context_length", 2048)),
        "vocab_size": vocab_size,
        "tie_word_embeddings": "output.weight" not in tensors,
        # Written three ways on purpose: legacy `rope_theta`/`rope_scaling` (transformers 4, most
        # loaders) and `rope_parameters` (transformers 5); all three say the same thing.
        "rope_theta": theta,
        "rope_scaling": rope_scaling,
        "rope_parameters": {"rope_type": "default", **(rope_scaling or {}), "rope_theta": theta},
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": True,
        "torch_dtype": "float32",
        **special,
    }
    if arch == "llama":
        cfg["attention_bias"] = any(n.endswith(".bias") and ".attn_" in n for n in tensors)
        cfg["mlp_bias"] = False
    else:  # qwen2: HF hard-codes q/k/v biases and no sliding window unless configured
        cfg.update(use_sliding_window=False, sliding_window=None, max_window_layers=n_layer)
    return cfg


def _plan_tensors(reader: GGUFReader, arch: str, cfg: dict) -> tuple[list[TensorEntry], list]:
    """Map every GGUF tensor to an HF name and a lazy float32 writer; fill biases HF expects.
    Also -> (hf_name, tensor, row_fix) for each matrix whose quantized codes are kept."""
    n_head, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    entries: dict[str, TensorEntry] = {}
    quantized = []

    def add(name: str, shape: tuple[int, ...], make) -> None:
        entries[name] = TensorEntry(name, "F32", shape, lambda f: f.write(np.ascontiguousarray(make(), np.float32).data))

    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape))
        if t.name == "rope_freqs.weight":
            continue  # folded into config rope_scaling
        if t.name in _GLOBAL_NAMES:
            hf = _GLOBAL_NAMES[t.name]
        elif (m := _BLOCK_RE.fullmatch(t.name)) and m.group(2) in _BLOCK_NAMES:
            hf = f"model.layers.{m.group(1)}.{_BLOCK_NAMES[m.group(2)]}.{m.group(3)}"
        else:
            raise UnsupportedModelError(f"GGUF tensor {t.name!r} has no Hugging Face {arch} counterpart")
        _check_dequantizable(t)
        heads = None
        if arch == "llama" and ".attn_q." in t.name:
            heads = n_head
        elif arch == "llama" and ".attn_k." in t.name:
            heads = n_kv
        # Default args bind this loop's tensor; the lambda runs later, during the write.
        add(hf, shape, lambda t=t, heads=heads: unpermute_rope(_dequantize(t), heads) if heads else _dequantize(t))
        if kept(t):
            quantized.append((hf, t, (lambda a, heads=heads: unpermute_rope(a, heads)) if heads else None))

    hd = cfg["head_dim"]
    proj_rows = {"q_proj": n_head * hd, "k_proj": n_kv * hd, "v_proj": n_kv * hd, "o_proj": cfg["hidden_size"]}
    biased = ("q_proj", "k_proj", "v_proj") + (("o_proj",) if arch == "llama" else ())
    for i in range(cfg["num_hidden_layers"]):
        for part in _BLOCK_NAMES.values():
            if f"model.layers.{i}.{part}.weight" not in entries:
                raise UnsupportedModelError(f"GGUF lacks the weight for layer {i} {part}")
        if arch == "qwen2" or cfg.get("attention_bias"):
            for proj in biased:  # HF creates these biases; a GGUF may omit all-zero ones
                name = f"model.layers.{i}.self_attn.{proj}.bias"
                if name not in entries:
                    add(name, (proj_rows[proj],), lambda n=proj_rows[proj]: np.zeros(n, np.float32))
    for name in ("model.embed_tokens.weight", "model.norm.weight"):
        if name not in entries:
            raise UnsupportedModelError(f"GGUF lacks {name} ({'token_embd' if 'embed' in name else 'output_norm'})")
    return list(entries.values()), quantized


def convert_gguf(src: Path, out: Path, *, progress: bool = True) -> None:
    """Write the HF files for GGUF `src` into the (existing, empty) folder `out`."""
    reader = GGUFReader(src)
    meta = GGUFMeta(reader)
    arch = meta.require("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedModelError(
            f"GGUF architecture {arch!r} is not supported; supported: {', '.join(sorted(SUPPORTED_ARCHITECTURES))}"
        )
    tensors = {t.name: t for t in reader.tensors}
    if "token_embd.weight" not in tensors:
        raise UnsupportedModelError("GGUF lacks token_embd.weight")
    vocab_size = int(tensors["token_embd.weight"].shape[1])  # ggml shape is [hidden, vocab]
    tok = build_tokenizer(meta, context_length=int(meta.get(f"{arch}.context_length", 2048)))
    cfg = _hf_config(meta, arch, tensors, vocab_size, tok.special_ids)
    entries, quantized = _plan_tensors(reader, arch, cfg)
    write_safetensors(out / "model.safetensors", entries, progress=progress, desc=f"convert {src.name}")
    write_quantized(out, quantized, src.name, progress)
    _write_json(out / "config.json", cfg)
    _write_json(out / "generation_config.json", dict(tok.special_ids))
    tok.tokenizer.save(str(out / "tokenizer.json"))
    _write_json(out / "tokenizer_config.json", tok.tokenizer_config)


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
