"""Bad input: a clear ValueError/TypeError naming the problem, and the engine keeps serving."""
import json

import pytest

from hybridllm import LLM, SamplingParams
from hybridllm.models.config import UnsupportedArchitectureError

from ..helpers.tiny_models import make_tiny


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory):
    folder = make_tiny(tmp_path_factory.mktemp("tiny"), "llama", max_position_embeddings=64)
    return LLM(str(folder), policy="gpu_only")


GOOD = SamplingParams(max_tokens=3, temperature=0.0)


def still_serves(llm):
    (out,) = llm.generate(["ok"], GOOD, use_tqdm=False)
    assert len(out.token_ids) == 3
    assert llm.engine.kv.num_used() == 0 and not llm.engine.has_unfinished_requests()


def test_empty_prompt(tiny_llm):
    with pytest.raises(ValueError, match="prompt is empty"):
        tiny_llm.generate([""], GOOD)
    with pytest.raises(ValueError, match="prompt is empty"):
        tiny_llm.generate([[]], GOOD)
    still_serves(tiny_llm)


def test_prompt_longer_than_context(tiny_llm):
    with pytest.raises(ValueError, match=r"prompt is 80 tokens.*max_model_len.*at most 63"):
        tiny_llm.generate(["x" * 80], GOOD)
    still_serves(tiny_llm)


def test_bad_batch_is_all_or_nothing(tiny_llm):
    with pytest.raises(ValueError, match="prompt is empty"):
        tiny_llm.generate(["fine", "also fine", ""], GOOD)
    assert not tiny_llm.engine.has_unfinished_requests()
    still_serves(tiny_llm)


def test_token_ids_out_of_vocab(tiny_llm):
    with pytest.raises(ValueError, match=r"prompt_token_ids: 9999 is not a token id in \[0, 256\)"):
        tiny_llm.generate([[1, 2, 9999]], GOOD)
    still_serves(tiny_llm)


def test_generation_stops_at_context_end(tiny_llm):
    (out,) = tiny_llm.generate(["y" * 60], SamplingParams(max_tokens=50, temperature=0.0), use_tqdm=False)
    assert out.finish_reason == "length" and len(out.token_ids) == 4   # 60 + 4 = 64 positions


@pytest.mark.parametrize("kwargs, match", [
    ({"max_tokens": 0}, "max_tokens must be an integer >= 1"),
    ({"max_tokens": 2.5}, "max_tokens must be an integer >= 1"),
    ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
    ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
    ({"temperature": -1}, "temperature must be a finite number >= 0"),
    ({"top_k": -3}, "top_k must be an integer >= -1"),
    ({"seed": -1}, "seed must be None or an integer"),
    ({"stop": [""]}, "stop must be a string or a list of non-empty strings"),
])
def test_sampling_params_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(**kwargs)


def test_unknown_sampling_key_is_named():
    with pytest.raises(ValueError, match="unknown sampling parameter.*: max_new_tokens"):
        SamplingParams.from_dict({"max_new_tokens": 3})
    assert SamplingParams.from_dict({"max_tokens": 3, "stop": ["a"]}).stop == ("a",)


def test_unknown_engine_option_and_bad_policy(tiny_llm):
    with pytest.raises(TypeError, match="unknown engine option.*: max_seqs"):
        LLM(tiny_llm.engine.config.model, max_seqs=3)
    with pytest.raises(ValueError, match="policy: 'fastest' is not one of"):
        LLM(tiny_llm.engine.config.model, policy="fastest")
    with pytest.raises(ValueError, match="max_num_seqs must be an integer >= 1"):
        LLM(tiny_llm.engine.config.model, max_num_seqs=0)


def test_model_folder_without_config(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="has no config.json"):
        LLM(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        LLM(str(tmp_path / "nowhere"))


def test_unsupported_architecture_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(UnsupportedArchitectureError, match="'GPT2LMHeadModel' is not supported.*LlamaForCausalLM"):
        LLM(str(tmp_path))


def test_unsupported_rope_scaling_is_named(tmp_path):
    folder = make_tiny(tmp_path, "llama")
    cfg = json.loads((folder / "config.json").read_text())
    cfg.pop("rope_parameters", None)
    cfg["rope_scaling"] = {"rope_type": "longrope", "factor": 2.0}
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="rope_scaling type 'longrope' is not supported"):
        LLM(str(folder))


def test_abort_frees_blocks_and_unknown_abort_is_false(tiny_llm):
    engine = tiny_llm.engine
    engine.add_request("keep", "abc", SamplingParams(max_tokens=20, temperature=0.0))
    engine.add_request("drop", "abcdefghijklmnopqrstuvwxyz", SamplingParams(max_tokens=20, temperature=0.0))
    engine.step()
    assert engine.kv.num_used() > 0
    assert engine.abort_request("drop") and not engine.abort_request("drop")
    assert not engine.abort_request("never-added")
    engine.kv.check()
    with pytest.raises(ValueError, match="already in use"):
        engine.add_request("keep", "abc", GOOD)
    while engine.has_unfinished_requests():
        engine.step()
    assert engine.kv.num_used() == 0
