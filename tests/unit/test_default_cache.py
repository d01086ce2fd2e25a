"""The conversion cache: convert once, never use half-written folders, errors name the path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ..helpers.tiny_gguf import random_state, tiny_config, train_tokenizer, write_gguf

import hybridllm.converters  # noqa: E402
from hybridllm.models import default  # noqa: E402


def _forbid_convert(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("convert() was called although a converted folder is cached")

    monkeypatch.setattr(hybridllm.converters, "convert", fail)


def _assert_complete(folder: Path) -> None:
    from safetensors import safe_open

    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["num_hidden_layers"] == 30
    with safe_open(str(folder / "model.safetensors"), "np") as f:
        assert len(list(f.keys())) == 272
    assert (folder / "tokenizer.json").stat().st_size > 1_000_000


def test_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("HYBRIDLLM_CACHE", str(tmp_path / "c"))
    assert default.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("HYBRIDLLM_CACHE")
    assert default.cache_dir() == Path.home() / ".cache" / "hybridllm"


def test_leftovers_ignored_and_second_call_does_not_convert(monkeypatch, tmp_path):
    monkeypatch.setenv("HYBRIDLLM_CACHE", str(tmp_path))
    final = default.default_model_path()
    assert final.parent == tmp_path / "models"
    # What an interrupted run could leave: a temp sibling, and (from a non-atomic copy) a partial folder.
    temp = final.parent / f".{final.name}.tmp-deadbeef"
    temp.mkdir(parents=True)
    (temp / "config.json").write_text("{}")
    final.mkdir()
    (final / "config.json").write_text('{"architectures": ["half"]}')

    path = default.default_model(progress=False)
    assert path == final
    _assert_complete(path)
    assert not temp.exists()

    before = (path / "model.safetensors").stat()
    _forbid_convert(monkeypatch)
    assert default.default_model(progress=False) == path
    assert default.resolve_model("default") == path
    after = (path / "model.safetensors").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def _script() -> list[str]:
    code = """
        from hybridllm.models.default import default_model
        print(default_model(progress=True))
    """
    return [sys.executable, "-c", textwrap.dedent(code)]


def test_killed_conversion_leaves_nothing_usable(tmp_path):
    env = {**os.environ, "HYBRIDLLM_CACHE": str(tmp_path)}
    proc = subprocess.Popen(_script(), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    models = tmp_path / "models"
    deadline = time.monotonic() + 120
    # Kill once the temp folder holds part of the weights.
    while time.monotonic() < deadline and proc.poll() is None:
        temps = [p for p in models.glob(".*.tmp-*")] if models.exists() else []
        if temps and (temps[0] / "model.safetensors").exists():
            proc.kill()
            break
        time.sleep(0.01)
    proc.wait()
    assert proc.returncode == -9, "conversion finished before it could be interrupted"
    visible = [p for p in models.iterdir() if not p.name.startswith(".")]
    assert visible == [], f"an interrupted conversion left a visible folder: {visible}"

    env_path = subprocess.run(_script(), env=env, capture_output=True, text=True, check=True)
    path = Path(env_path.stdout.strip())
    _assert_complete(path)
    assert not list(models.glob(".*.tmp-*"))


def test_concurrent_processes_convert_once(tmp_path):
    env = {**os.environ, "HYBRIDLLM_CACHE": str(tmp_path)}
    procs = [subprocess.Popen(_script(), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in results]
    paths = {out.strip() for out, _ in results}
    assert len(paths) == 1
    assert sum(err.count("hybridllm: converting") for _, err in results) == 1
    _assert_complete(Path(paths.pop()))


def test_resolve_model_errors_name_the_path(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        default.resolve_model(missing)
    empty = tmp_path / "empty-folder"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"empty-folder.*config\.json"):
        default.resolve_model(empty)
    stray = tmp_path / "weights.bin"
    stray.write_bytes(b"x")
    with pytest.raises(ValueError, match="weights.bin"):
        default.resolve_model(stray)


def test_resolve_model_passes_hf_folders_through(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert default.resolve_model(str(tmp_path)) == tmp_path


def test_resolve_model_converts_a_gguf_once(monkeypatch, tmp_path):
    monkeypatch.setenv("HYBRIDLLM_CACHE", str(tmp_path / "cache"))
    tok = train_tokenizer(300)
    cfg = tiny_config("llama", tok.get_vocab_size())
    src = write_gguf(tmp_path / "Tiny Model.gguf", cfg, random_state(cfg), tok)
    first = default.resolve_model(src, progress=False)
    assert first.parent == tmp_path / "cache" / "models" and first.name.startswith("tiny-model-")
    assert json.loads((first / "config.json").read_text())["hidden_size"] == 64

    with monkeypatch.context() as m:
        _forbid_convert(m)
        assert default.resolve_model(str(src), progress=False) == first
    # A changed file (new mtime) is a new cache entry, converted again.
    st = src.stat()
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    second = default.resolve_model(src, progress=False)
    assert second != first and (second / "model.safetensors").is_file()
