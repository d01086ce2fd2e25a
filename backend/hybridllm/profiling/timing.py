"""Timing one probe: best of a few runs, synchronized on the device that runs it."""
from __future__ import annotations

import time
from typing import Callable

import torch


def timeit(fn: Callable[[], object], device: torch.device, reps: int = 3) -> float:
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    fn()
    sync()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    # The minimum: on a shared machine, interference only ever adds time.
    return max(min(times), 1e-7)
