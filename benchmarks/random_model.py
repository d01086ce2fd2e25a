"""An HF model folder with random weights of a real model's shape, for GPU benchmarks.

    python benchmarks/random_model.py llama-3-8b /tmp/llama3-8b [--dtype bfloat16] [--in-memory]

--in-memory writes only the recipe (config, tokenizer, random_weights.json): the engine draws the
weights when it loads the folder, on the GPU, and nothing is written (models/random_weights.py).

Speed and memory depend on the shapes, not the values, and no hub can be reached from
the GPU machines; greedy decoding with `ignore_eos` runs the same work for any weights.
The tokenizer maps one made-up word to each id, so any id decodes.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers

from hybridllm.dtypes import MODEL_DTYPES, torch_dtype
from hybridllm.models.random_weights import MARKER

SHAPES = {
    # name: (hidden, layers, heads, kv heads, intermediate, vocab, rope theta, max positions, tied)
    "llama-3-8b": (4096, 32, 32, 8, 14336, 128256, 500000.0, 8192, False),
    "llama-3.2-1b": (2048, 16, 32, 8, 8192, 128256, 500000.0, 8192, True),
    "smollm2-135m": (576, 30, 9, 3, 1536, 49152, 100000.0, 8192, True),
    "tiny": (256, 8, 4, 2, 512, 1024, 10000.0, 4096, False),      # the dry runs' stand-in (CPU, seconds)
}


def make(name: str, folder: Path, dtype: str = "bfloat16", seed: int = 0, in_memory: bool = False) -> Path:
    if name not in SHAPES:
        raise ValueError(f"shape: {name!r} is not one of {', '.join(SHAPES)}")
    if dtype not in MODEL_DTYPES:
        raise ValueError(f"dtype: {dtype!r} is not one of {', '.join(MODEL_DTYPES)}")
    hidden, layers, heads, kvh, inter, vocab, theta, max_pos, tied = SHAPES[name]
    td = torch_dtype(dtype)
    folder.mkdir(parents=True, exist_ok=True)
    if in_memory:
        (folder / MARKER).write_text(json.dumps({"seed": seed}))
    else:
        (folder / MARKER).unlink(missing_ok=True)
        _write_weights(folder, hidden, layers, heads, kvh, inter, vocab, tied, td, seed)
    _write_config(folder, name, dtype)
    return folder


def _write_weights(folder, hidden, layers, heads, kvh, inter, vocab, tied, td, seed) -> None:
    d = hidden // heads
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator(dev).manual_seed(seed)

    def rnd(*shape):                    # made on the GPU when there is one: seconds, not minutes
        return (torch.randn(*shape, generator=g, device=dev, dtype=torch.float32) * 0.02).to(td).cpu()

    w = {"model.embed_tokens.weight": rnd(vocab, hidden), "model.norm.weight": torch.ones(hidden, dtype=td)}
    if not tied:
        w["lm_head.weight"] = rnd(vocab, hidden)
    for i in range(layers):
        p = f"model.layers.{i}."
        w |= {p + "input_layernorm.weight": torch.ones(hidden, dtype=td),
              p + "post_attention_layernorm.weight": torch.ones(hidden, dtype=td),
              p + "self_attn.q_proj.weight": rnd(heads * d, hidden),
              p + "self_attn.k_proj.weight": rnd(kvh * d, hidden),
              p + "self_attn.v_proj.weight": rnd(kvh * d, hidden),
              p + "self_attn.o_proj.weight": rnd(hidden, heads * d),
              p + "mlp.gate_proj.weight": rnd(inter, hidden),
              p + "mlp.up_proj.weight": rnd(inter, hidden),
              p + "mlp.down_proj.weight": rnd(hidden, inter)}
    save_file(w, str(folder / "model.safetensors"))


def _write_config(folder: Path, name: str, dtype: str) -> None:
    hidden, layers, heads, kvh, inter, vocab, theta, max_pos, tied = SHAPES[name]
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
           "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kvh,
           "intermediate_size": inter, "vocab_size": vocab, "rope_theta": theta, "rms_norm_eps": 1e-5,
           "max_position_embeddings": max_pos, "tie_word_embeddings": tied, "torch_dtype": dtype,
           "eos_token_id": None, "bos_token_id": None, "_note": f"random weights in the shape of {name}"}
    (folder / "config.json").write_text(json.dumps(cfg, indent=1))
    vocab_map = {f"w{i} ": i for i in range(vocab)}
    tok = Tokenizer(models.WordLevel(vocab=vocab_map, unk_token="w0 "))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(folder / "tokenizer.json"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("shape", choices=sorted(SHAPES))
    ap.add_argument("folder", type=Path)
    ap.add_argument("--dtype", default="bfloat16", choices=sorted(MODEL_DTYPES))
    ap.add_argument("--in-memory", action="store_true", help="write the recipe only; weights drawn at load time")
    args = ap.parse_args()
    t = time.perf_counter()
    make(args.shape, args.folder, args.dtype, in_memory=args.in_memory)
    what = "recipe" if args.in_memory else "weights"
    print(f"{args.shape} ({args.dtype}, random {what}) written to {args.folder} in {time.perf_counter() - t:.0f} s")


if __name__ == "__main__":
    main()
