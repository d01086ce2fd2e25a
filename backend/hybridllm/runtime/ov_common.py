"""Shared OpenVINO plumbing for the host graphs: one Core, named parameters, stable model hashes."""
from __future__ import annotations

import functools
import os
from pathlib import Path

import openvino as ov
import openvino.opset13 as ops

CACHE_DIR_ENV = "HYBRIDLLM_OV_CACHE_DIR"


@functools.lru_cache(maxsize=1)
def core() -> ov.Core:
    return ov.Core()


def default_cache_dir() -> str:
    """CACHE_DIR for compiled host graphs: $HYBRIDLLM_OV_CACHE_DIR, else $HYBRIDLLM_CACHE/ov,
    else ~/.cache/hybridllm/ov."""
    if os.environ.get(CACHE_DIR_ENV):
        return os.environ[CACHE_DIR_ENV]
    root = os.environ.get("HYBRIDLLM_CACHE") or str(Path.home() / ".cache" / "hybridllm")
    return str(Path(root) / "ov")


def param(shape, etype, name: str):
    p = ops.parameter(shape, etype, name=name)
    p.output(0).get_tensor().set_names({name})
    return p


def stable_names(model: ov.Model, prefix: str) -> ov.Model:
    """Names every non-parameter node by its position.

    Auto-generated names count up per process, so the second identical graph
    built in one process would hash differently and miss CACHE_DIR.
    """
    for i, node in enumerate(model.get_ordered_ops()):
        if node.get_type_name() != "Parameter":
            node.set_friendly_name(f"{prefix}.{i}")
    for i, out in enumerate(model.outputs):
        if not any(n.startswith(prefix) for n in out.get_names()):
            out.get_tensor().set_names({f"{prefix}.out{i}"})
    return model
