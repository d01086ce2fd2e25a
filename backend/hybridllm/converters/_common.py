"""Shared pieces of the converters: the error type and the atomic output folder."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Iterator


class UnsupportedModelError(ValueError):
    """The source is well formed but uses an architecture, tokenizer or tensor type we do not convert."""


def temp_prefix(out: Path) -> str:
    """Prefix of the hidden sibling folders a conversion into `out` writes to (callers may clean them up)."""
    return f".{out.name}.tmp-"


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories; the rename is still atomic
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output_dir(out: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp sibling of `out`; on success rename it to `out` in one step.

    A crash or exception leaves `out` untouched (never half-written); the temp folder is removed
    on exceptions, and a hard kill leaves only a hidden `.<name>.tmp-*` folder that nothing reads.
    """
    out = Path(os.path.abspath(out))
    empty_dir = out.is_dir() and not any(out.iterdir())
    if out.exists() and not empty_dir and not overwrite:
        raise FileExistsError(f"output folder {out} already exists and is not empty (pass overwrite=True to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(out), dir=out.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; the result should look like any other folder
        for f in tmp.rglob("*"):
            if f.is_file():
                _fsync_path(f)  # data on disk before the rename makes it visible
        old = None
        if out.exists():
            if empty_dir:
                out.rmdir()
            else:  # overwrite: move the old folder aside first, since rename cannot replace a non-empty dir
                old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
                os.rename(out, old)
        os.rename(tmp, out)
        _fsync_path(out.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
