"""HF folder -> HF folder: shards merge byte-exactly into one model.safetensors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from hybridllm.converters import UnsupportedModelError, convert


def _sharded_folder(path, arch="LlamaForCausalLM", index=True):
    path.mkdir()
    g = torch.Generator().manual_seed(0)
    shard_a = {"model.embed_tokens.weight": torch.randn(10, 8, generator=g),
               "model.norm.weight": torch.randn(8, generator=g).to(torch.bfloat16)}
    shard_b = {"lm_head.weight": torch.randn(10, 8, generator=g).half(),
               "model.layers.0.mlp.up_proj.weight": torch.randn(16, 8, generator=g)}
    save_file(shard_a, str(path / "model-00001-of-00002.safetensors"), metadata={"format": "pt"})
    save_file(shard_b, str(path / "model-00002-of-00002.safetensors"), metadata={"format": "pt"})
    if index:
        weight_map = {**{k: "model-00001-of-00002.safetensors" for k in shard_a},
                      **{k: "model-00002-of-00002.safetensors" for k in shard_b}}
        (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (path / "config.json").write_text(json.dumps({"architectures": [arch], "model_type": "llama"}))
    (path / "tokenizer.json").write_text('{"fake": true}')
    (path / "tokenizer_config.json").write_text("{}")
    return path, {**shard_a, **shard_b}


@pytest.mark.parametrize("index", [True, False])
def test_shards_merge_exactly(tmp_path, index):
    src, tensors = _sharded_folder(tmp_path / "src", index=index)
    out = convert(src, tmp_path / "out", progress=False)
    merged = load_file(str(out / "model.safetensors"))
    assert set(merged) == set(tensors)
    for name, want in tensors.items():
        assert merged[name].dtype == want.dtype, name
        assert torch.equal(merged[name], want), name
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json",
                                                      "tokenizer_config.json"]


def test_missing_config_names_the_file(tmp_path):
    src, _ = _sharded_folder(tmp_path / "src")
    (src / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        convert(src, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_unsupported_architecture_is_named(tmp_path):
    src, _ = _sharded_folder(tmp_path / "src", arch="GPT2LMHeadModel")
    with pytest.raises(UnsupportedModelError, match=r"GPT2LMHeadModel.*LlamaForCausalLM"):
        convert(src, tmp_path / "out", progress=False)


def test_pickle_only_folder_is_refused(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForCausalLM"]}))
    (src / "pytorch_model.bin").write_bytes(np.zeros(8, np.uint8).tobytes())
    with pytest.raises(UnsupportedModelError, match=r"pytorch_model.*safetensors"):
        convert(src, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))
