"""Corpora: the Python standard library (default), user text files, and their documents.

A corpus is a list of Documents; the held-out split is made by document, so no text
seen in training is scored as validation."""

from __future__ import annotations

import glob
import hashlib
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from qkov.errors import QkovError

SYNTHETIC = ("repeated-random", "induction-task")


@dataclass(frozen=True)
class Document:
    name: str
    text: str


@dataclass
class Corpus:
    """Documents plus the count of files skipped as binary or non-UTF-8."""

    spec: str
    documents: list[Document]
    skipped: int = 0

    def fingerprint(self) -> str:
        """A content hash: names and texts, so the token cache notices any change."""
        h = hashlib.sha256()
        for d in self.documents:
            h.update(d.name.encode("utf-8", "surrogatepass"))
            h.update(b"\0")
            h.update(hashlib.sha256(d.text.encode("utf-8")).digest())
        return h.hexdigest()[:16]

    def split(self, val_fraction: float = 0.05) -> tuple[list[Document], list[Document]]:
        """Held-out split by document, decided by a hash of the name (stable across runs)."""
        train, val = [], []
        for d in self.documents:
            bucket = int(hashlib.sha256(d.name.encode("utf-8", "surrogatepass")).hexdigest(), 16)
            (val if (bucket % 10_000) < val_fraction * 10_000 else train).append(d)
        if not val and len(train) > 1:
            val.append(train.pop())
        if not train:
            train, val = val, []
        return train, val


def stdlib_root() -> Path:
    """The standard library folder the default corpus reads: $QKOV_STDLIB if set (to train on
    one Python's library from another: the shipped models read Python 3.11's), else the
    running Python's."""
    env = os.environ.get("QKOV_STDLIB")
    root = Path(env) if env else Path(sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise QkovError(f"QKOV_STDLIB={env!r} is not a folder: point it at a lib/python3.X folder")
    return root


def stdlib_files() -> list[Path]:
    """The .py files of the standard library (`stdlib_root`; no site-packages)."""
    root = stdlib_root()
    files = [
        p
        for p in root.rglob("*.py")
        if "site-packages" not in p.parts and "dist-packages" not in p.parts
    ]
    return sorted(files)


def _expand(spec: str) -> list[Path]:
    paths: list[Path] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        if any(ch in part for ch in "*?["):
            matches = sorted(Path(p) for p in glob.glob(part, recursive=True))
            paths += [p for p in matches if p.is_file()]
            continue
        p = Path(part).expanduser()
        if p.is_dir():
            paths += sorted(f for f in p.rglob("*") if f.is_file())
        elif p.is_file():
            paths.append(p)
        else:
            raise QkovError(
                f"corpus {part!r} is not a file, folder or glob that exists: "
                "use --corpus stdlib, repeated-random, induction-task, or a path to text files"
            )
    return paths


def read_text_files(paths: list[Path]) -> tuple[list[Document], int]:
    """Read UTF-8 text; files that are binary (NUL bytes) or not UTF-8 are counted, not read."""
    docs, skipped = [], 0
    for p in paths:
        try:
            raw = p.read_bytes()
        except OSError:
            skipped += 1
            continue
        if b"\0" in raw[:8192]:
            skipped += 1
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            skipped += 1
            continue
        if text.strip():
            docs.append(Document(str(p), text))
    return docs, skipped


def load_corpus(spec: str = "stdlib") -> Corpus:
    """`stdlib`, or comma-separated files / folders / globs of UTF-8 text."""
    if spec in SYNTHETIC:
        raise QkovError(f"corpus {spec!r} is synthetic token data, not text: use qkov.data.prepare")
    paths = stdlib_files() if spec == "stdlib" else _expand(spec)
    docs, skipped = read_text_files(paths)
    if not docs:
        what = "only binary or non-UTF-8 files" if skipped else "no text"
        raise QkovError(
            f"corpus {spec!r} has {what} ({len(paths)} files, {skipped} skipped): "
            "point --corpus at UTF-8 text files or use --corpus stdlib"
        )
    return Corpus(spec, docs, skipped)
