"""A model folder that holds only a random-weight recipe (models/random_weights.py): the weights are drawn
at load time, the same for every load, device placement and policy, and nothing is written."""
import json
import sys
from pathlib import Path

import pytest
import torch

from hybridllm.models.llama import LlamaModel
from hybridllm.models.random_weights import MARKER

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from random_model import make  # noqa: E402


def test_recipe_folder_loads_the_same_weights_every_time(tmp_path):
    folder = make("tiny", tmp_path / "m", "float32", seed=3, in_memory=True)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", MARKER, "tokenizer.json"]
    a = LlamaModel.load(folder, "cpu", "float32")
    b = LlamaModel.load(folder, "cpu", "bfloat16", layer_device="cpu")
    assert a.layers[1].qkv.shape == (4 * 64 + 2 * 2 * 64, 256) and a.lm_head is not a.embed_tokens
    assert torch.equal(a.layers[1].qkv.bfloat16(), b.layers[1].qkv)
    assert torch.equal(a.layers[0].input_norm, torch.ones(256))
    assert 0.015 < a.layers[0].down.std().item() < 0.025
    # Another seed is another model; the fused qkv's parts differ from each other.
    c = LlamaModel.load(make("tiny", tmp_path / "s", "float32", seed=4, in_memory=True), "cpu", "float32")
    assert not torch.equal(a.layers[0].o_proj, c.layers[0].o_proj)
    q, k = a.layers[0].qkv[:256], a.layers[0].qkv[256:384]
    assert not torch.equal(q[:128], k)


def test_written_weights_replace_a_recipe(tmp_path):
    folder = make("tiny", tmp_path / "m", "float32", in_memory=True)
    make("tiny", folder, "float32")
    assert not (folder / MARKER).exists() and (folder / "model.safetensors").is_file()
    LlamaModel.load(folder, "cpu", "float32")


def test_bad_recipe_names_the_field(tmp_path):
    folder = make("tiny", tmp_path / "m", "float32", in_memory=True)
    (folder / MARKER).write_text(json.dumps({"seed": -1}))
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        LlamaModel.load(folder, "cpu", "float32")
