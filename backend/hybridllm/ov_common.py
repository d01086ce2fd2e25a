"""OpenVINO plumbing shared by the host attention graphs (attention/) and the host linear graphs
(runtime/): one Core, one compile config, named parameters, stable model hashes."""
from __future__ import annotations

import functools

import openvino as ov
import openvino.opset13 as ops


@functools.lru_cache(maxsize=1)
def core() -> ov.Core:
    return ov.Core()


def compile_config(precision: str = "f32", cache_dir: str | None = None, num_threads: int | None = None,
                   **extra) -> dict:
    """The CPU plugin's settings for every graph we compile.

    precision: INFERENCE_PRECISION_HINT. The plugin's default on bf16-capable CPUs is bf16, so
    exact f32 must be asked for. LATENCY: THROUGHPUT would split 2 cores into 2 streams and slow
    down each call. cache_dir: CACHE_DIR (None: off). num_threads: INFERENCE_NUM_THREADS (None: all).
    """
    cfg = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY", **extra}
    if cache_dir:
        cfg["CACHE_DIR"] = cache_dir
    if num_threads:
        cfg["INFERENCE_NUM_THREADS"] = num_threads
    return cfg


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
