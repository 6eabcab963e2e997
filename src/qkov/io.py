"""Atomic file writes: a temp file in the same directory, fsync, then rename.

A crash or a full disk mid-write leaves the previous file untouched."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import save_file

# mkstemp creates 0600 files; written results should get the usual 0644 (less the umask).
_UMASK = os.umask(0)
os.umask(_UMASK)
_MODE = 0o666 & ~_UMASK


@contextmanager
def _replacing(path: Path) -> Iterator[str]:
    """Yield a temp file name beside `path`; once written, fsync it and rename it over
    `path`. On any error the temp file is removed and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _MODE)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with _replacing(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_safetensors(
    path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    """save_file to a temp name in the same folder, then rename over `path`."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with _replacing(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)
