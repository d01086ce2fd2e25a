"""Tiny random HF checkpoints (Llama, Mistral, Qwen2) saved to disk, for fast parity tests."""
from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers

VOCAB = 256


def save_tokenizer(folder: Path) -> None:
    # One token per character; enough for the engine to encode and decode prompts.
    vocab = {chr(32 + i): i for i in range(VOCAB - 1)}
    vocab["<unk>"] = VOCAB - 1
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.save(str(folder / "tokenizer.json"))


def make_tiny(folder: Path, arch: str, seed: int = 0, **overrides) -> Path:
    import transformers

    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  eos_token_id=None, bos_token_id=None, pad_token_id=None)
    common.update(overrides)
    cfg_cls, model_cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    }[arch]
    torch.manual_seed(seed)
    model = model_cls(cfg_cls(**common)).eval()
    # Random init leaves norms at 1 and biases at 0; perturb them so they are tested too.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith(".bias"):
                p.add_(torch.randn_like(p) * 0.1)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    save_tokenizer(folder)
    return folder


def hf_greedy(model, prompt_ids: list[int], n: int) -> list[int]:
    """HF greedy decoding with its own KV cache, never stopping early."""
    ids = torch.tensor([prompt_ids])
    out: list[int] = []
    past = None
    with torch.no_grad():
        for _ in range(n):
            res = model(ids, past_key_values=past, use_cache=True)
            past = res.past_key_values
            tok = int(res.logits[0, -1].argmax())
            out.append(tok)
            ids = torch.tensor([[tok]])
    return out


def tiny_with_greedy(folder: Path, prompts: list[str], n: int, seed: int = 0, **overrides) -> tuple[Path, list]:
    """A tiny Llama and HF's greedy tokens (fp32, CPU) for each prompt: the reference of the CUDA tests."""
    import transformers
    folder = make_tiny(folder, "llama", seed=seed, **overrides)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    return folder, [hf_greedy(hf, tok.encode(p).ids, n) for p in prompts]
