"""Profile on first use: the cache in $HYBRIDLLM_CACHE/profiles/ (the real measurement is timed by
tests/system/test_auto.py; here a stand-in measures, so only the cache logic runs)."""
import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from hybridllm.models.config import ModelConfig
from hybridllm.profiling import cache
from hybridllm.profiling.store import save_json

from ..helpers.profiles import synthetic

TINY = {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512,
        "max_position_embeddings": 4096}
CPU = torch.device("cpu")


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HYBRIDLLM_CACHE", str(tmp_path))
    return tmp_path


class Stand:
    """A measure_fn that counts its calls and returns a synthetic profile."""

    def __init__(self, name="measured"):
        self.calls, self.name = 0, name

    def __call__(self, mc, dtype, device, progress=True, quick=False, host_linear=None):
        assert quick, "first use must ask for the quick grid"
        self.calls += 1
        return synthetic(name=self.name)


def test_second_start_reads_the_cache(home):
    mc = ModelConfig.from_dict(TINY)
    m = Stand()
    prof, how = cache.cached_profile(mc, "float32", CPU, measure_fn=m)
    assert m.calls == 1 and "measured now" in how and prof.name == "measured"
    again, how = cache.cached_profile(mc, "float32", CPU, measure_fn=m)
    assert m.calls == 1 and "cached profile" in how and again.to_dict() == prof.to_dict()
    files = sorted(p.name for p in (home / "profiles").iterdir())
    assert files == [cache.profile_path(cache.fingerprint(mc, "float32", CPU)).name,
                     cache.profile_path(cache.fingerprint(mc, "float32", CPU)).with_suffix(".lock").name]


def test_the_key_follows_the_model_and_dtype(home):
    mc = ModelConfig.from_dict(TINY)
    other = ModelConfig.from_dict({**TINY, "num_hidden_layers": 3})
    fp = cache.fingerprint(mc, "float32", CPU)
    assert cache.profile_path(fp) != cache.profile_path(cache.fingerprint(other, "float32", CPU))
    assert cache.profile_path(fp) != cache.profile_path(cache.fingerprint(mc, "bfloat16", CPU))
    assert fp["cpu"] and fp["cores"] and fp["torch"] == torch.__version__ and fp["gpu"] is None


@pytest.mark.parametrize("content", ["{not json", json.dumps({"fingerprint": None}), json.dumps([1, 2])])
def test_a_corrupt_file_is_ignored_with_a_warning(home, caplog, content):
    mc = ModelConfig.from_dict(TINY)
    path = cache.profile_path(cache.fingerprint(mc, "float32", CPU))
    path.parent.mkdir(parents=True)
    path.write_text(content)
    m = Stand()
    with caplog.at_level(logging.WARNING, logger="hybridllm"):
        prof, _ = cache.cached_profile(mc, "float32", CPU, measure_fn=m)
    assert m.calls == 1 and prof.name == "measured"
    assert any(str(path) in r.getMessage() for r in caplog.records)
    assert json.loads(path.read_text())["profile"]["name"] == "measured"      # replaced by a valid one


def test_a_foreign_fingerprint_is_not_used(home, caplog):
    mc = ModelConfig.from_dict(TINY)
    fp = cache.fingerprint(mc, "float32", CPU)
    path = cache.profile_path(fp)
    save_json({"fingerprint": {**fp, "cpu": "some other CPU"}, "profile": synthetic(name="foreign").to_dict()}, path)
    m = Stand()
    with caplog.at_level(logging.WARNING, logger="hybridllm"):
        prof, _ = cache.cached_profile(mc, "float32", CPU, measure_fn=m)
    assert prof.name == "measured" and m.calls == 1
    assert any("measured elsewhere" in r.getMessage() for r in caplog.records)


def test_an_interrupted_write_leaves_nothing_half_written(home, monkeypatch):
    path = home / "profiles" / "p.json"

    def dies(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(json, "dump", dies)
    with pytest.raises(KeyboardInterrupt):
        save_json({"a": 1}, path)
    assert list(path.parent.iterdir()) == []


def test_two_concurrent_first_starts_measure_once(home):
    # Two processes start at once; the stand-in measurement takes 2 s and leaves a mark each time it runs.
    script = textwrap.dedent(f"""
        import sys, time, torch
        from pathlib import Path
        sys.path.insert(0, {str(Path(__file__).parents[2])!r})
        from hybridllm.models.config import ModelConfig
        from hybridllm.profiling import cache
        from tests.helpers.profiles import synthetic

        def slow(mc, dtype, device, progress=True, quick=False, host_linear=None):
            with open({str(home / 'marks')!r}, 'a') as f:
                f.write('m')
            time.sleep(2)
            return synthetic(name='measured')

        prof, how = cache.cached_profile(ModelConfig.from_dict({TINY!r}), 'float32', torch.device('cpu'),
                                         measure_fn=slow)
        print(prof.name, '|', how)
    """)
    env = {"HYBRIDLLM_CACHE": str(home), "PATH": "/usr/bin:/bin"}
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e for _, e in outs]
    assert (home / "marks").read_text() == "m"                        # measured once
    hows = sorted(o.split("|")[1].strip() for o, _ in outs)
    assert hows[0].startswith("cached profile") and "another process" in hows[0]
    assert hows[1].startswith("measured now")
    files = sorted(p.name for p in (home / "profiles").iterdir())
    assert len(files) == 2 and files[0].endswith(".json") and files[1].endswith(".lock")   # no temp left
    data = json.loads((home / "profiles" / files[0]).read_text())
    assert data["profile"]["name"] == "measured"
