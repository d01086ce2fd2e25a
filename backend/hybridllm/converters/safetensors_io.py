"""Streaming safetensors reader/writer, so conversion holds one tensor in memory at a time.

Format: 8-byte little-endian header length, JSON header {name: {dtype, shape, data_offsets}},
then the tensors' bytes back to back in header order.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterable

from tqdm import tqdm

DTYPE_SIZES = {
    "F64": 8, "I64": 8, "U64": 8,
    "F32": 4, "I32": 4, "U32": 4,
    "F16": 2, "BF16": 2, "I16": 2, "U16": 2,
    "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str  # safetensors dtype name, e.g. "F32"
    shape: tuple[int, ...]
    write: Callable[[BinaryIO], None]  # writes exactly `nbytes` bytes

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_SIZES[self.dtype]


@dataclass(frozen=True)
class StoredTensor:
    dtype: str
    shape: tuple[int, ...]
    begin: int  # absolute file offsets of the tensor's bytes
    end: int


def read_header(path: Path) -> dict[str, StoredTensor]:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    base = 8 + n
    return {
        name: StoredTensor(h["dtype"], tuple(h["shape"]), base + h["data_offsets"][0], base + h["data_offsets"][1])
        for name, h in header.items()
    }


def copy_range(src: Path, begin: int, end: int, chunk: int = 64 << 20) -> Callable[[BinaryIO], None]:
    """A TensorEntry.write that copies bytes [begin, end) of `src` in bounded chunks."""

    def write(out: BinaryIO) -> None:
        with open(src, "rb") as f:
            f.seek(begin)
            left = end - begin
            while left:
                buf = f.read(min(chunk, left))
                if not buf:
                    raise IOError(f"{src} ends before offset {end}")
                out.write(buf)
                left -= len(buf)

    return write


def write_safetensors(path: Path, entries: Iterable[TensorEntry], *, progress: bool = True, desc: str = "") -> None:
    # Widest dtypes first keeps every tensor aligned to its element size (header is padded to 8).
    entries = sorted(entries, key=lambda e: -DTYPE_SIZES[e.dtype])
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"duplicate tensor names: {dup[:5]}")
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for e in entries:
        header[e.name] = {"dtype": e.dtype, "shape": list(e.shape), "data_offsets": [offset, offset + e.nbytes]}
        offset += e.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for e in tqdm(entries, desc=desc or path.name, unit="tensor", disable=not progress):
            start = f.tell()
            e.write(f)
            if f.tell() - start != e.nbytes:
                raise AssertionError(f"{e.name}: wrote {f.tell() - start} bytes, expected {e.nbytes}")
