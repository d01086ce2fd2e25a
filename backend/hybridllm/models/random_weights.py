"""Random weights made at load time, for a model folder that holds only their recipe.

A folder with config.json, tokenizer.json and `random_weights.json` (`{"seed": S}`) loads like any
other, but its tensors are drawn when they are read, on the GPU when there is one, and never touch
the disk: a benchmark of Llama-3-8B's shape on a lent GPU would otherwise spend minutes writing and
reading 16 GB (speed depends on shapes only). benchmarks/random_model.py writes such folders.
"""
from __future__ import annotations

import json
import zlib
from pathlib import Path

import torch

from .config import ModelConfig

MARKER = "random_weights.json"
SCALE = 0.02


def is_random(folder: Path) -> bool:
    return (Path(folder) / MARKER).is_file()


class RandomCheckpoint:
    """The `safe_open` handle's two methods (keys, get_tensor) over tensors drawn on demand.

    Each tensor's values depend on the seed and its name only, so every policy, device and load
    order sees the same model. Norms are ones, as a fresh HF model has them."""

    def __init__(self, folder: Path, cfg: ModelConfig):
        recipe = json.loads((Path(folder) / MARKER).read_text())
        seed = recipe.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"{Path(folder) / MARKER}: seed must be an integer >= 0, got {seed!r}")
        self.seed = seed
        self.make_on = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        H, KVH, D, hid, inter = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.hidden_size,
                                 cfg.intermediate_size)
        self.shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (cfg.vocab_size, hid),
                                                   "model.norm.weight": (hid,)}
        if not cfg.tie_word_embeddings:
            self.shapes["lm_head.weight"] = (cfg.vocab_size, hid)
        for i in range(cfg.num_hidden_layers):
            p = f"model.layers.{i}."
            self.shapes |= {p + "input_layernorm.weight": (hid,), p + "post_attention_layernorm.weight": (hid,),
                            p + "self_attn.q_proj.weight": (H * D, hid), p + "self_attn.k_proj.weight": (KVH * D, hid),
                            p + "self_attn.v_proj.weight": (KVH * D, hid), p + "self_attn.o_proj.weight": (hid, H * D),
                            p + "mlp.gate_proj.weight": (inter, hid), p + "mlp.up_proj.weight": (inter, hid),
                            p + "mlp.down_proj.weight": (hid, inter)}
            if cfg.attention_bias:
                self.shapes |= {p + "self_attn.q_proj.bias": (H * D,), p + "self_attn.k_proj.bias": (KVH * D,),
                                p + "self_attn.v_proj.bias": (KVH * D,)}

    def keys(self):
        return self.shapes.keys()

    def get_tensor(self, name: str) -> torch.Tensor:
        shape = self.shapes[name]
        if name.endswith("norm.weight"):
            return torch.ones(shape, device=self.make_on)
        g = torch.Generator(self.make_on).manual_seed(self.seed * 1_000_003 + zlib.crc32(name.encode()))
        return torch.randn(shape, generator=g, device=self.make_on) * SCALE     # float32; the loader casts
