"""Rebuild a Hugging Face `tokenizer.json` from a GGUF file's `tokenizer.ggml.*` metadata.

Only byte-level BPE (`tokenizer.ggml.model == "gpt2"`) is supported. The pre-tokenizer is picked
from `tokenizer.ggml.pre`, which names the HF pre-tokenizer llama.cpp recognised at export time:

- smollm / starcoder / refact: split every digit, then GPT-2's ByteLevel regex (SmolLM2's HF setup).
- qwen2: NFC, then Qwen2's split regex (single digits), ByteLevel without its own regex.
- llama-bpe / llama3: Llama 3's regex (digits in groups of up to 3), ByteLevel without regex,
  and `ignore_merges` (a word that is already a token is not re-merged), as in Llama 3's HF file.
- default / gpt-2 / anything else: GPT-2's ByteLevel regex alone (with a warning for unknown names,
  since tokens may then split differently from the original tokenizer).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from ._common import UnsupportedModelError

# llama.cpp token types (gguf.TokenType): 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
_CONTROL, _USER_DEFINED = 3, 4

_QWEN2_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
             r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_PLAIN_GPT2 = {"default", "gpt-2", "gpt2", "olmo", "phi-2"}


@dataclass
class GGUFTokenizer:
    tokenizer: Tokenizer
    tokenizer_config: dict  # contents of tokenizer_config.json
    special_ids: dict  # bos/eos/pad token ids for config.json and generation_config.json


def _pre_tokenizer(pre: str):
    """Returns (normalizer, pre_tokenizer, ignore_merges) for a `tokenizer.ggml.pre` name."""
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    bare_byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    if pre in ("smollm", "starcoder", "refact"):
        return None, pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level]), False
    if pre == "qwen2":
        split = pre_tokenizers.Split(Regex(_QWEN2_RE), behavior="isolated", invert=False)
        return normalizers.NFC(), pre_tokenizers.Sequence([split, bare_byte_level]), False
    if pre in ("llama-bpe", "llama3"):
        split = pre_tokenizers.Split(Regex(_LLAMA3_RE), behavior="isolated", invert=False)
        return None, pre_tokenizers.Sequence([split, bare_byte_level]), True
    if pre not in _PLAIN_GPT2:
        warnings.warn(f"GGUF pre-tokenizer {pre!r} is not known here; using GPT-2's byte-level split", stacklevel=3)
    return None, byte_level, False


def _post_processor(add_bos: bool, add_eos: bool, bos: str | None, eos: str | None, ids: dict[str, int]):
    if not ((add_bos and bos) or (add_eos and eos)):
        return processors.ByteLevel(trim_offsets=False)
    head = f"{bos}:0 " if add_bos and bos else ""
    tail = f" {eos}:0" if add_eos and eos else ""
    used = [t for t, on in ((bos, add_bos), (eos, add_eos)) if on and t]
    return processors.TemplateProcessing(
        single=f"{head}$A:0{tail}",
        pair=f"{head}$A:0{tail} {head.replace(':0', ':1')}$B:1{tail.replace(':0', ':1')}",
        special_tokens=[(t, ids[t]) for t in dict.fromkeys(used)],
    )


def build_tokenizer(meta, *, context_length: int) -> GGUFTokenizer:
    """`meta` is a gguf_to_hf.GGUFMeta; returns the HF tokenizer and its config files' contents."""
    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise UnsupportedModelError(
            f"GGUF tokenizer model {kind!r} is not supported; supported: 'gpt2' (byte-level BPE)"
        )
    tokens: list[str] = meta.require("tokenizer.ggml.tokens")
    types: list[int] = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges") or []]
    vocab: dict[str, int] = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)  # duplicates keep their first id; later copies are unreachable anyway

    pre = meta.get("tokenizer.ggml.pre", "default")
    normalizer, pre_tok, ignore_merges = _pre_tokenizer(pre)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False,
                               ignore_merges=ignore_merges))
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tok
    tok.decoder = decoders.ByteLevel()
    # Control tokens (e.g. <|im_start|>) must match as whole strings, never via BPE; they keep
    # their GGUF ids because their text is already in the vocab.
    tok.add_tokens([
        AddedToken(t, special=ty == _CONTROL, normalized=False)
        for t, ty in zip(tokens, types) if ty in (_CONTROL, _USER_DEFINED)
    ])

    def token_of(key: str) -> tuple[int | None, str | None]:
        i = meta.get(key)
        return (int(i), tokens[int(i)]) if i is not None and 0 <= int(i) < len(tokens) else (None, None)

    bos_id, bos = token_of("tokenizer.ggml.bos_token_id")
    eos_id, eos = token_of("tokenizer.ggml.eos_token_id")
    pad_id, pad = token_of("tokenizer.ggml.padding_token_id")
    _, unk = token_of("tokenizer.ggml.unknown_token_id")
    eot_id, _ = token_of("tokenizer.ggml.eot_token_id")
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False))
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False))
    tok.post_processor = _post_processor(add_bos, add_eos, bos, eos, vocab)

    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": context_length,
        "clean_up_tokenization_spaces": False,
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "bos_token": bos,
        "eos_token": eos,
        "pad_token": pad,
        "unk_token": unk,
    }
    template = meta.get("tokenizer.chat_template")
    if template:
        config["chat_template"] = template
    special = {"bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": pad_id}
    if eot_id is not None and eot_id != eos_id:  # chat models end turns with EOT; stop on both
        special["eos_token_id"] = [eos_id, eot_id] if eos_id is not None else eot_id
    return GGUFTokenizer(tok, {k: v for k, v in config.items() if v is not None}, special)
