"""GGUF -> HF conversion against a tiny random model written the way llama.cpp writes GGUFs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from safetensors.numpy import load_file
from tokenizers import Tokenizer

from ..helpers.tiny_gguf import quantized, random_state, tiny_config, train_tokenizer, write_gguf

from hybridllm.converters import UnsupportedModelError, convert  # noqa: E402

TEXTS = ["Once upon a time, there was a little", "digits 1234567890!", "naïve café 東京 🚀\n\ttab",
         "<|im_start|>user\nhi<|im_end|>", "  leading spaces and trailing  ",
         "a  12 and   345"]  # spaces before digits group differently without the Digits split


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return train_tokenizer(300)


def _hf_logits(folder_or_cfg, state=None):
    """Logits of a transformers model: loaded from a folder, or built from cfg + numpy state."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if state is None:
        model = AutoModelForCausalLM.from_pretrained(str(folder_or_cfg), local_files_only=True,
                                                     attn_implementation="eager")
    else:
        cfg = dict(folder_or_cfg)
        config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
        model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
        missing, unexpected = model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)
        assert not unexpected and set(missing) <= {"lm_head.weight"}
        model.tie_weights()
    ids = torch.tensor([[5, 17, 42, 99, 3, 250, 7, 64]])
    with torch.no_grad():
        return model.float().eval()(ids).logits.numpy()


def test_llama_weights_round_trip_with_mixed_quant_types(tmp_path, tok):
    cfg = tiny_config("llama", tok.get_vocab_size())
    sd = random_state(cfg)
    qtypes = {  # Q and K in several types, since their rows are un-permuted after dequantizing
        "model.layers.0.self_attn.q_proj.weight": Q.F32, "model.layers.0.self_attn.k_proj.weight": Q.F32,
        "model.layers.1.self_attn.q_proj.weight": Q.F16, "model.layers.1.self_attn.k_proj.weight": Q.Q8_0,
        "model.layers.0.self_attn.v_proj.weight": Q.F16, "model.layers.1.self_attn.v_proj.weight": Q.BF16,
        "model.layers.0.self_attn.o_proj.weight": Q.Q8_0, "model.layers.1.self_attn.o_proj.weight": Q.Q4_0,
        "model.layers.0.mlp.gate_proj.weight": Q.Q8_0, "model.layers.1.mlp.up_proj.weight": Q.Q5_1,
        "model.embed_tokens.weight": Q.Q8_0, "lm_head.weight": Q.F16,
    }
    src = write_gguf(tmp_path / "tiny.gguf", cfg, sd, tok, qtypes=qtypes)
    out = convert(src, tmp_path / "hf", progress=False)

    got = load_file(str(out / "model.safetensors"))
    assert set(got) == set(sd)
    for name, want in sd.items():
        qtype = qtypes.get(name, Q.F32)
        assert got[name].dtype == np.float32 and got[name].shape == want.shape, name
        if qtype == Q.F32:
            np.testing.assert_array_equal(got[name], want, err_msg=name)
        elif qtype == Q.F16:
            np.testing.assert_array_equal(got[name], want.astype(np.float16).astype(np.float32), err_msg=name)
        else:  # row-wise blocks: quantizing permuted rows == permuting quantized rows, so this is exact
            np.testing.assert_array_equal(got[name], quantized(want, qtype), err_msg=name)
            np.testing.assert_allclose(got[name], want, atol=0.15 * np.abs(want).max(), err_msg=name)

    config = json.loads((out / "config.json").read_text())
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "vocab_size", "max_position_embeddings"):
        assert config[key] == cfg[key], key
    assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
    assert config["rope_theta"] == cfg["rope_theta"] and config["rms_norm_eps"] == pytest.approx(1e-5)
    assert config["tie_word_embeddings"] is False and config["torch_dtype"] == "float32"
    assert config["bos_token_id"] == tok.token_to_id("<|im_start|>")
    assert config["eos_token_id"] == config["pad_token_id"] == tok.token_to_id("<|im_end|>")
    assert not list(tmp_path.glob(".hf.tmp-*")), "temp folder left behind"


@pytest.mark.parametrize("tied", [False, True])
def test_llama_logits_match_transformers(tmp_path, tok, tied):
    cfg = tiny_config("llama", tok.get_vocab_size(), tied=tied)
    sd = random_state(cfg, seed=1)
    out = convert(write_gguf(tmp_path / "t.gguf", cfg, sd, tok), tmp_path / "hf", progress=False)
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is tied
    np.testing.assert_allclose(_hf_logits(out), _hf_logits(cfg, sd), rtol=1e-4, atol=1e-4)


def test_qwen2_biases_convert_without_permute(tmp_path, tok):
    cfg = tiny_config("qwen2", tok.get_vocab_size())
    sd = random_state(cfg, seed=2, qkv_bias=True)
    out = convert(write_gguf(tmp_path / "q.gguf", cfg, sd, tok, arch="qwen2", pre="qwen2"), tmp_path / "hf",
                  progress=False)
    got = load_file(str(out / "model.safetensors"))
    assert set(got) == set(sd)
    for name, want in sd.items():
        np.testing.assert_array_equal(got[name], want, err_msg=name)
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"] and config["model_type"] == "qwen2"
    np.testing.assert_allclose(_hf_logits(out), _hf_logits(cfg, sd), rtol=1e-4, atol=1e-4)


def test_tokenizer_matches_original(tmp_path, tok):
    from transformers import AutoTokenizer

    cfg = tiny_config("llama", tok.get_vocab_size())
    out = convert(write_gguf(tmp_path / "t.gguf", cfg, random_state(cfg), tok), tmp_path / "hf", progress=False)
    rebuilt = Tokenizer.from_file(str(out / "tokenizer.json"))
    hf_tok = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    for text in TEXTS:
        want = tok.encode(text).ids
        assert rebuilt.encode(text).ids == want, text
        assert hf_tok.encode(text) == want, text
        assert hf_tok.decode(want) == text
    assert hf_tok.encode("12") == [tok.token_to_id("1"), tok.token_to_id("2")]
    tok_cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert tok_cfg["bos_token"] == "<|im_start|>" and tok_cfg["eos_token"] == "<|im_end|>"
    assert "<|im_start|>" in tok_cfg["chat_template"]
    assert hf_tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == \
        "<|im_start|>hi<|im_end|>"
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == tok.token_to_id("<|im_end|>")


def test_unsupported_architecture_is_named(tmp_path, tok):
    cfg = tiny_config("llama", tok.get_vocab_size())
    src = write_gguf(tmp_path / "g.gguf", cfg, random_state(cfg), tok, arch="falcon")
    with pytest.raises(UnsupportedModelError, match=r"'falcon'.*llama.*qwen2"):
        convert(src, tmp_path / "hf", progress=False)
    assert not (tmp_path / "hf").exists() and not list(tmp_path.glob(".hf.*")), "partial output left behind"


def test_unsupported_quant_type_is_named(tmp_path, tok):
    cfg = tiny_config("llama", tok.get_vocab_size())
    src = write_gguf(tmp_path / "q.gguf", cfg, random_state(cfg), tok,
                     qtypes={"model.layers.1.mlp.down_proj.weight": Q.Q8_1})
    with pytest.raises(UnsupportedModelError, match=r"blk\.1\.ffn_down\.weight.*Q8_1"):
        convert(src, tmp_path / "hf", progress=False)
    assert not (tmp_path / "hf").exists()


def test_unsupported_tokenizer_model_is_named(tmp_path, tok):
    cfg = tiny_config("llama", tok.get_vocab_size())
    src = write_gguf(tmp_path / "s.gguf", cfg, random_state(cfg), tok, tokenizer_model="bert")
    with pytest.raises(UnsupportedModelError, match="'bert'"):
        convert(src, tmp_path / "hf", progress=False)


def test_llama3_rope_freqs_become_rope_scaling(tmp_path, tok):
    cfg = tiny_config("llama", tok.get_vocab_size())
    cfg["rope_theta"] = 500000.0
    hd, factor = cfg["head_dim"], 8.0
    # llama.cpp's generate_extra_tensors for rope_type llama3 (low 1, high 4, original context 8192)
    freqs = 1.0 / cfg["rope_theta"] ** (np.arange(0, hd, 2) / hd)
    wavelen = 2 * np.pi / freqs
    smooth = (8192 / wavelen - 1) / 3
    factors = np.where(wavelen < 2048, 1.0, np.where(wavelen > 8192, factor, 1 / ((1 - smooth) / factor + smooth)))
    src = write_gguf(tmp_path / "l3.gguf", cfg, random_state(cfg), tok, pre="llama-bpe",
                     extra_tensors={"rope_freqs.weight": (factors.astype(np.float32), Q.F32)})
    out = convert(src, tmp_path / "hf", progress=False)
    config = json.loads((out / "config.json").read_text())
    assert config["rope_scaling"]["rope_type"] == "llama3"
    assert config["rope_scaling"]["factor"] == pytest.approx(factor)
    assert config["rope_parameters"]["rope_theta"] == 500000.0
    assert "rope_freqs.weight" not in load_file(str(out / "model.safetensors"))


def test_existing_output_is_not_clobbered(tmp_path, tok):
    cfg = tiny_config("llama", tok.get_vocab_size())
    src = write_gguf(tmp_path / "t.gguf", cfg, random_state(cfg), tok)
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="hf"):
        convert(src, tmp_path / "hf", progress=False)
    assert (tmp_path / "hf" / "keep.txt").read_text() == "mine"
    convert(src, tmp_path / "hf", progress=False, overwrite=True)
    assert not (tmp_path / "hf" / "keep.txt").exists() and (tmp_path / "hf" / "model.safetensors").is_file()
    assert not list(tmp_path.glob(".hf.*"))
