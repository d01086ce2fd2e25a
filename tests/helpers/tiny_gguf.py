"""Test helpers: a tiny random Llama/Qwen2 in HF layout, a byte-level BPE tokenizer trained here,
and a GGUF writer that lays tensors out the way llama.cpp's convert_hf_to_gguf.py does."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "Once upon a time, there was a little girl named Emma who loved to play.",
    "The quick brown fox jumps over the lazy dog 1234567890 times.",
    "naïve café déjà vu, 東京 and 🚀 rockets; tabs\tand\nnewlines.",
    "def f(x):\n    return x * 2  # comment",
] * 20


def train_tokenizer(vocab_size: int = 300) -> Tokenizer:
    """Byte-level BPE with SmolLM2's pre-tokenizer (individual digits, then GPT-2's ByteLevel)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def tiny_config(arch: str = "llama", vocab_size: int = 300, tied: bool = False) -> dict:
    cfg = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5, rope_theta=10000.0,
               max_position_embeddings=256, vocab_size=vocab_size, tie_word_embeddings=tied)
    cfg["architectures"] = ["LlamaForCausalLM" if arch == "llama" else "Qwen2ForCausalLM"]
    cfg["model_type"] = arch
    return cfg


def random_state(cfg: dict, seed: int = 0, qkv_bias: bool = False) -> dict[str, np.ndarray]:
    """HF-named float32 weights; [out_features, in_features] for linears."""
    rng = np.random.default_rng(seed)
    h, f, hd = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
    nq, nkv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd

    def w(*shape):
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    sd = {"model.embed_tokens.weight": w(cfg["vocab_size"], h), "model.norm.weight": 1 + w(h)}
    if not cfg["tie_word_embeddings"]:
        sd["lm_head.weight"] = w(cfg["vocab_size"], h)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        sd.update({
            p + "input_layernorm.weight": 1 + w(h), p + "post_attention_layernorm.weight": 1 + w(h),
            p + "self_attn.q_proj.weight": w(nq, h), p + "self_attn.k_proj.weight": w(nkv, h),
            p + "self_attn.v_proj.weight": w(nkv, h), p + "self_attn.o_proj.weight": w(h, nq),
            p + "mlp.gate_proj.weight": w(f, h), p + "mlp.up_proj.weight": w(f, h),
            p + "mlp.down_proj.weight": w(h, f),
        })
        if qkv_bias:
            sd.update({p + "self_attn.q_proj.bias": w(nq), p + "self_attn.k_proj.bias": w(nkv),
                       p + "self_attn.v_proj.bias": w(nkv)})
    return sd


_TO_GGUF = {
    "model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output",
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def gguf_name(hf: str) -> str:
    base, kind = hf.rsplit(".", 1)
    if base.startswith("model.layers."):
        _, _, i, rest = base.split(".", 3)
        return f"blk.{i}.{_TO_GGUF[rest]}.{kind}"
    return f"{_TO_GGUF[base]}.{kind}"


def rope_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's LlamaModel.permute: HF half-split rope rows -> interleaved pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def quantized(arr: np.ndarray, qtype: Q) -> np.ndarray:
    """What a reader gets back after storing `arr` as `qtype` (the exact expected value)."""
    return gguf.quants.dequantize(gguf.quants.quantize(arr, qtype), qtype).reshape(arr.shape)


# Where each K-quant block keeps its f16 super-scales (the rest of the block is codes and 6-bit scales).
K_SCALES = {Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,)}


def k_blocks(rows: int, cols: int, qtype: Q, rng: np.random.Generator, d_range=None) -> np.ndarray:
    """Random K-quant blocks [rows, cols / 256 * bytes]: every code and sub-scale bit pattern occurs, the
    f16 super-scales drawn from d_range, or powers of two 2^-14..2^-12 (None: then every d * sub-scale is
    an exact f16, and the kept codes decode to exactly gguf's weights). gguf has no K-quant quantizer."""
    size = gguf.GGML_QUANT_SIZES[qtype][1]
    raw = rng.integers(0, 256, (rows, cols // 256, size), dtype=np.uint8)
    for off in K_SCALES[qtype]:
        shape = (rows, cols // 256, 1)
        d = (rng.uniform(*d_range, shape) if d_range else 2.0 ** -rng.integers(12, 15, shape)).astype(np.float16)
        raw[..., off:off + 2] = d.view(np.uint8).reshape(rows, cols // 256, 2)
    return raw.reshape(rows, -1)


def write_gguf(path: Path, cfg: dict, state: dict[str, np.ndarray], tok: Tokenizer | None, *,
               arch: str = "llama", qtypes: dict[str, Q] | None = None, pre: str = "smollm",
               tokenizer_model: str = "gpt2", extra_tensors: dict[str, tuple[np.ndarray, Q]] | None = None) -> Path:
    """Write `state` (HF names) as a GGUF; qtypes maps HF names to storage types (default F32)."""
    qtypes = qtypes or {}
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_dimension_count(cfg["head_dim"])
    w.add_vocab_size(cfg["vocab_size"])
    if tok is not None:
        data = json.loads(tok.to_str())
        vocab = data["model"]["vocab"]
        tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
        merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
        w.add_tokenizer_model(tokenizer_model)
        w.add_tokenizer_pre(pre)
        w.add_token_list(tokens)
        w.add_token_types([3 if t in SPECIALS else 1 for t in tokens])
        w.add_token_merges(merges)
        w.add_bos_token_id(vocab["<|im_start|>"])
        w.add_eos_token_id(vocab["<|im_end|>"])
        w.add_pad_token_id(vocab["<|im_end|>"])
        w.add_add_bos_token(False)
        w.add_chat_template("{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}")
    tensors = {}
    for hf, arr in state.items():
        if arch == "llama" and ".q_proj." in hf:
            arr = rope_permute(arr, cfg["num_attention_heads"])
        elif arch == "llama" and ".k_proj." in hf:
            arr = rope_permute(arr, cfg["num_key_value_heads"])
        tensors[gguf_name(hf)] = (arr, qtypes.get(hf, Q.F32))
    tensors.update(extra_tensors or {})
    for name, (arr, qtype) in tensors.items():
        if qtype in (Q.F32, Q.F16):
            w.add_tensor(name, arr.astype(np.float32 if qtype == Q.F32 else np.float16))
        elif qtype in K_SCALES:        # random blocks: the weights are what the blocks say, not `arr`
            w.add_tensor(name, k_blocks(arr.shape[0], arr.shape[1], qtype, np.random.default_rng(len(name))),
                         raw_dtype=qtype)
        elif qtype.name in ("Q8_1",):  # no quantizer exists: store raw bytes of the right size
            bs, ts = gguf.GGML_QUANT_SIZES[qtype]
            raw = np.zeros((*arr.shape[:-1], arr.shape[-1] // bs * ts), np.uint8)
            w.add_tensor(name, raw, raw_dtype=qtype)
        else:
            w.add_tensor(name, gguf.quants.quantize(arr, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
