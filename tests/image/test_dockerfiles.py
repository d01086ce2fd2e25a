"""The two Dockerfiles, read statically: the GPU image (FROM the NGC tritonserver py3 image) and the
CPU image (FROM debian:bookworm-slim) run the same docker/steps.sh steps, in the same order, but for
the torch wheel; every package steps.sh names is pinned as in pyproject.toml; and every pinned
dependency the images install has a wheel for the GPU base's Python, read from PyPI's file list.
(The GPU image itself cannot be built here: no NGC registry and no GPU; see docs/deploy.md.)"""
from __future__ import annotations

import json
import re
import shlex
import tomllib
import urllib.request
from pathlib import Path

import pytest
from packaging.tags import compatible_tags, cpython_tags
from packaging.utils import parse_wheel_filename

ROOT = Path(__file__).resolve().parents[2]
GPU, CPU = ROOT / "docker" / "Dockerfile", ROOT / "docker" / "Dockerfile.cpu"
STEPS = ROOT / "docker" / "steps.sh"
# nvcr.io/nvidia/tritonserver:24.10-py3 is Ubuntu 22.04 with its Python 3.10 and glibc 2.35 (NGC's
# release notes for 24.10); this cannot be read here, since no NGC registry answers.
GPU_PYTHON, GPU_GLIBC = (3, 10), (2, 35)


def instructions(path: Path) -> list[tuple[str, str]]:
    text = path.read_text().replace("\\\n", " ")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def image_requirements() -> list[str]:
    """What steps.sh deps installs: [project].dependencies and the serve extra."""
    p = pyproject()
    return list(p["dependencies"]) + list(p["optional-dependencies"]["serve"])


def exact_pins(reqs: list[str]) -> dict[str, str]:
    pins = {}
    for req in reqs:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?==([^;\s]+)", req.strip())
        if m:
            pins[m.group(1).lower()] = m.group(3)
    return pins


def test_bases_are_the_ngc_tritonserver_and_debian_bookworm_slim():
    (gpu,) = [a for op, a in instructions(GPU) if op == "FROM"]
    (cpu,) = [a for op, a in instructions(CPU) if op == "FROM"]
    assert re.fullmatch(r"nvcr\.io/nvidia/tritonserver:\S+-py3", gpu), gpu
    assert cpu == "debian:bookworm-slim"


def test_both_images_share_every_step_but_the_base_and_the_torch_wheel():
    def steps(path, torch):
        out = [(op, a) for op, a in instructions(path) if op not in ("FROM", "ARG")]
        assert ("RUN", f"sh docker/steps.sh torch {torch}") in out, f"{path.name} has no `steps.sh torch {torch}`"
        return [(op, a.replace(f"torch {torch}", "torch <wheel>")) for op, a in out]
    gpu, cpu = steps(GPU, "cuda"), steps(CPU, "cpu")
    assert gpu == cpu
    runs = [a for op, a in gpu if op == "RUN"]
    assert all(a.startswith("sh docker/steps.sh ") for a in runs), runs   # no step outside the shared script
    assert [a.split()[2] for a in runs] == ["system", "torch", "deps", "project", "model"]
    expose = [a for op, a in gpu if op == "EXPOSE"]
    assert expose == ["8000 8001 8002 9000"]
    (cmd,) = [json.loads(a) for op, a in gpu if op == "CMD"]
    assert cmd[:2] == ["hybridllm", "serve"] and cmd[cmd.index("--host") + 1] == "0.0.0.0"


def test_copies_exist_and_pass_each_dockerignore():
    for path in (GPU, CPU):
        ignore = (path.parent / f"{path.name}.dockerignore").read_text().splitlines()
        copies = [shlex.split(a) for op, a in instructions(path) if op == "COPY"]
        assert copies
        for args in copies:
            for src in [a for a in args if not a.startswith("--")][:-1]:
                assert (ROOT / src).exists(), f"{path.name}: COPY source {src} is missing"
                assert f"!{src.rstrip('/')}" in ignore, f"{path.name}.dockerignore drops {src}"


def test_steps_pin_torch_as_pyproject_and_install_nothing_unpinned():
    pins = exact_pins(image_requirements())
    text = STEPS.read_text()
    named = re.findall(r"\$PIP [^\n]*?\b(torch==[^\s]+)", text)
    assert named and {n.split("==")[1].split("+")[0] for n in named} == {pins["torch"]}
    for line in text.splitlines():       # every other install reads pyproject (-r) or is the project itself
        if line.strip().startswith("$PIP") and "torch==" not in line:
            assert "-r /tmp/requirements.txt" in line or "/opt/hybridllm" in line, line


def _registry_files(name: str) -> dict[str, list[str]]:
    try:
        with urllib.request.urlopen(f"https://pypi.org/pypi/{name}/json", timeout=60) as r:
            data = json.load(r)
    except OSError as e:
        pytest.skip(f"PyPI's JSON API cannot be reached from here ({e}); the wheel-tag check needs it")
    return {v: [f["filename"] for f in files] for v, files in data["releases"].items()}


def test_every_pinned_image_dependency_has_a_wheel_for_the_gpu_base_python():
    platforms = [f"manylinux_{GPU_GLIBC[0]}_{m}_x86_64" for m in range(GPU_GLIBC[1], 16, -1)]
    platforms += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
    accepted = set(cpython_tags(GPU_PYTHON, platforms=platforms)) | set(compatible_tags(GPU_PYTHON, platforms=platforms))
    pins = exact_pins(image_requirements())
    assert {"torch", "openvino", "nvidia-pytriton", "tokenizers"} <= set(pins)
    missing = {}
    for name, version in sorted(pins.items()):
        files = _registry_files(name).get(version)
        assert files, f"{name}=={version} is not on PyPI"
        wheels = [f for f in files if f.endswith(".whl")]
        if not any(set(parse_wheel_filename(f)[3]) & accepted for f in wheels):
            missing[f"{name}=={version}"] = wheels
    assert not missing, f"no wheel for CPython {GPU_PYTHON} on glibc {GPU_GLIBC} x86_64: {missing}"


def test_pytriton_ships_a_stub_for_the_gpu_base_python():
    import importlib.util
    spec = importlib.util.find_spec("pytriton")
    assert spec is not None, "nvidia-pytriton is not installed (pip install -e '.[serve]')"
    stubs = Path(spec.submodule_search_locations[0]) / "tritonserver" / "python_backend_stubs"
    assert (stubs / ("%d.%d" % GPU_PYTHON) / "triton_python_backend_stub").is_file()
