"""The device kernels' numerics in CI: device_kernel_checks.py run under Triton's CPU interpreter, in a
fresh process (Triton chooses interpreted or compiled when first imported); and the kernel choice."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hybridllm.kernels import resolve_kernels

CHECKS = Path(__file__).with_name("device_kernel_checks.py")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU runs the kernels compiled: tests/cuda/test_graphs.py")
def test_triton_kernels_under_the_interpreter_match_torch():
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(CHECKS)],
                          env=env, capture_output=True, text=True, timeout=600, cwd=CHECKS.parents[2])
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    passed = re.search(r"(\d+) passed", proc.stdout)
    assert passed and int(passed.group(1)) >= 17 and "skipped" not in proc.stdout, proc.stdout[-2000:]


def test_kernel_choice(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    cpu = torch.device("cpu")
    assert resolve_kernels("auto", cpu) == "torch"
    assert resolve_kernels("torch", cpu) == "torch"
    with pytest.raises(ValueError, match="device_kernels: 'triton' needs a CUDA device"):
        resolve_kernels("triton", cpu)
    with pytest.raises(ValueError, match="device_kernels: 'fast' is not one of auto, triton, torch"):
        resolve_kernels("fast", cpu)
