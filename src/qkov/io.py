"""Atomic file writes (a temp file in the same directory, fsync, then rename) and the checks
a command runs on its output location before it does any work.

A crash or a full disk mid-write leaves the previous file untouched."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qkov.errors import QkovError

if TYPE_CHECKING:
    import torch

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
    """save_file to a temp name in the same folder, then rename over `path`. The metadata's
    keys are sorted in the header, so the same tensors and metadata give the same bytes."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with _replacing(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)
        if metadata is not None and len(metadata) > 1:
            _sort_metadata(tmp, path)


def _sort_metadata(tmp: str, path: Path) -> None:
    """Rewrite a safetensors header in place with its __metadata__ keys sorted: safetensors
    (0.8) keeps them in a Rust HashMap and writes them in a random order, per call
    (safetensors issue #584). The header keeps its length (the same JSON members in
    another order; padded with spaces, as safetensors pads it), so the data does not move.
    tmp: the file written; path: the name it will have."""
    with open(tmp, "r+b") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))  # "__metadata__" first, then the tensors in file order
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        text = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        if len(text) > n:
            raise QkovError(
                f"cannot sort the metadata of {path}: its header grew from {n} to {len(text)} "
                "bytes (safetensors escapes text differently?): please report it"
            )
        f.seek(8)
        f.write(text.ljust(n))


def _writable_folder(folder: Path, what: str, flag: str) -> None:
    """The nearest existing ancestor of `folder` must be a writable directory (the folders
    below it are created later)."""
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise QkovError(f"{flag} {what}: {probe} is a file, not a folder: choose another {flag}")
    try:  # try it (os.access says yes to root everywhere, /proc included); leaves nothing
        fd, tmp = tempfile.mkstemp(dir=probe, prefix=".qkov-write-check.")
    except OSError as e:
        raise QkovError(
            f"{flag} {what}: cannot write in {probe} ({e.strerror or e}): choose another {flag}"
        ) from None
    os.close(fd)
    os.unlink(tmp)


def check_output_dir(path: str | Path, flag: str = "--out") -> Path:
    """Refuse, before any work, an output folder that cannot be written: a file in its place,
    a file among its parents, or a read-only location. Writes nothing."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise QkovError(f"{flag} {path} is a file, not a folder: choose another {flag}")
    _writable_folder(path, str(path), flag)
    return path


def check_output_file(path: str | Path, flag: str) -> Path:
    """Refuse, before any work, an output file that cannot be written: a folder in its place,
    a file among its parents, or a read-only location. Writes nothing."""
    path = Path(path)
    if path.is_dir():
        raise QkovError(f"{flag} {path} is a folder: give a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise QkovError(f"{flag} {path} is not writable: choose another {flag}")
    _writable_folder(path.parent, str(path), flag)
    return path


def json_safe(x: Any) -> Any:
    """Nested lists, tuples and dicts with NaN or inf (not JSON) written as None (null)."""
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    return None if isinstance(x, float) and not math.isfinite(x) else x
