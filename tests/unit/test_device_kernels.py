"""The device kernels' numerics in CI: device_kernel_checks.py run under Triton's CPU interpreter, in a
fresh process (Triton chooses interpreted or compiled when first imported); and the kernel choice."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hybridllm.kernels import DeviceOps, resolve_kernels
from hybridllm.kernels.linear import GemvTable, Tile, choose, decode_gemv_shapes

CHECKS = Path(__file__).with_name("device_kernel_checks.py")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU runs the kernels compiled: tests/cuda/test_graphs.py")
def test_triton_kernels_under_the_interpreter_match_torch():
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(CHECKS)],
                          env=env, capture_output=True, text=True, timeout=600, cwd=CHECKS.parents[2])
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    passed = re.search(r"(\d+) passed", proc.stdout)
    assert passed and int(passed.group(1)) >= 43 and "skipped" not in proc.stdout, proc.stdout[-2000:]


def test_kernel_choice(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    cpu = torch.device("cpu")
    assert resolve_kernels("auto", cpu) == "torch"
    assert resolve_kernels("torch", cpu) == "torch"
    with pytest.raises(ValueError, match="device_kernels: 'triton' needs a CUDA device"):
        resolve_kernels("triton", cpu)
    with pytest.raises(ValueError, match="device_kernels: 'fast' is not one of auto, triton, torch"):
        resolve_kernels("fast", cpu)


def test_gemv_choice_keeps_cublas_unless_a_tile_clearly_wins():
    a, b = Tile(16, 256, 4), Tile(32, 128, 8)
    assert choose({None: 10.0, a: 9.6, b: 9.8}) is None          # within the 5% margin: noise
    assert choose({None: 10.0, a: 6.0, b: 4.0}) == b
    assert choose({None: 10.0, a: float("inf")}) is None         # a tile that failed to run
    assert choose({a: 1.0}) == a                                 # no cuBLAS time: any tile that ran
    assert choose({None: 10.0}) is None


def test_gemv_table_and_shapes():
    assert decode_gemv_shapes(32, 8, 128, 4096) == {"qkv": (6144, 4096), "o_proj": (4096, 4096)}
    t = GemvTable({(6144, 4096, 1): Tile(32, 256, 4)},
                  (("qkv", 6144, 4096, 1, 20e-6, 12e-6, "32x256/4"), ("o_proj", 4096, 4096, 1, 9e-6, 9e-6, "cuBLAS")))
    assert t.lookup(6144, 4096, 1) == Tile(32, 256, 4) and t.lookup(6144, 4096, 2) is None
    assert t.summary() == "split-K GEMV for qkv M=1 32x256/4 (1.67x)"


def test_gemv_is_off_on_the_cpu():
    """No table on the CPU: DeviceOps.linear is F.linear, bit for bit."""
    ops = DeviceOps("torch")
    assert ops.tune_gemv({"qkv": (48, 32)}, torch.float32, torch.device("cpu")).startswith("split-K GEMV: off")
    assert ops.gemv is None
    x, w = torch.randn(1, 32), torch.randn(48, 32)
    assert torch.equal(ops.linear(x, w), torch.nn.functional.linear(x, w))
