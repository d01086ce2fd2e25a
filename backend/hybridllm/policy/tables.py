"""Measured lookup tables and their interpolation.

Times are interpolated bilinearly in log-log space (like NEO's table predictor):
GEMM and attention times are near power laws in tokens and bytes, so log space
keeps interpolation error small between sparse grid points. Outside the grid
the edge cells are extended along the same log-log slope.
"""
from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass


def _check_axis(name: str, axis: tuple[float, ...]) -> None:
    if len(axis) < 1:
        raise ValueError(f"{name}: needs at least one point")
    if any(not (isinstance(v, (int, float)) and v > 0 and math.isfinite(v)) for v in axis):
        raise ValueError(f"{name}: every point must be a finite number > 0, got {list(axis)}")
    if any(b <= a for a, b in zip(axis, axis[1:])):
        raise ValueError(f"{name}: points must be strictly increasing, got {list(axis)}")


def _cell(axis: tuple[float, ...], x: float) -> tuple[int, float]:
    """Index i and log-space weight w so that x sits between axis[i] and axis[i+1] (w may leave [0,1])."""
    if len(axis) == 1:
        return 0, 0.0
    i = min(max(bisect_right(axis, x) - 1, 0), len(axis) - 2)
    lo, hi = math.log(axis[i]), math.log(axis[i + 1])
    return i, (math.log(x) - lo) / (hi - lo)


@dataclass(frozen=True)
class Table2D:
    """seconds[i][j] measured at x[i], y[j]."""
    x: tuple[float, ...]
    y: tuple[float, ...]
    seconds: tuple[tuple[float, ...], ...]
    name: str = "table"

    def __post_init__(self):
        _check_axis(f"{self.name}.x", self.x)
        _check_axis(f"{self.name}.y", self.y)
        if len(self.seconds) != len(self.x) or any(len(r) != len(self.y) for r in self.seconds):
            raise ValueError(f"{self.name}.seconds: must be {len(self.x)} rows of {len(self.y)} values")
        if any(not (v > 0 and math.isfinite(v)) for r in self.seconds for v in r):
            raise ValueError(f"{self.name}.seconds: every value must be a finite time > 0")

    def __call__(self, x: float, y: float) -> float:
        if x <= 0 or y <= 0:
            return 0.0
        i, wx = _cell(self.x, x)
        j, wy = _cell(self.y, y)
        s = self.seconds

        def at(a: int, b: int) -> float:
            return math.log(s[min(a, len(self.x) - 1)][min(b, len(self.y) - 1)])

        top = at(i, j) * (1 - wy) + at(i, j + 1) * wy
        bottom = at(i + 1, j) * (1 - wy) + at(i + 1, j + 1) * wy
        return math.exp(top * (1 - wx) + bottom * wx)

    def to_dict(self) -> dict:
        return {"x": list(self.x), "y": list(self.y), "seconds": [list(r) for r in self.seconds]}

    @classmethod
    def from_dict(cls, d: dict, name: str) -> "Table2D":
        if not isinstance(d, dict):
            raise ValueError(f"{name}: must be an object with x, y and seconds")
        for key in ("x", "y", "seconds"):
            if key not in d:
                raise ValueError(f"{name}.{key}: missing")
        return cls(tuple(d["x"]), tuple(d["y"]), tuple(tuple(r) for r in d["seconds"]), name=name)

    @classmethod
    def from_function(cls, x, y, fn, name: str) -> "Table2D":
        return cls(tuple(x), tuple(y), tuple(tuple(fn(a, b) for b in y) for a in x), name=name)
