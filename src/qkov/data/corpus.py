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
from typing import Any

from qkov.errors import QkovError

SYNTHETIC = ("repeated-random", "induction-task")


@dataclass(frozen=True)
class Document:
    name: str
    text: str


@dataclass
class Corpus:
    """Documents plus the count (and names) of files skipped as binary or non-UTF-8."""

    spec: str
    documents: list[Document]
    skipped: int = 0
    skipped_files: tuple[str, ...] = ()

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


HELDOUT = "heldout.json"  # a run's record of the documents it held out (`heldout_record`)


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def heldout_record(corpus: Corpus, val_fraction: float = 0.05) -> dict[str, Any]:
    """The held-out split as a run records it (heldout.json): each held-out document's name
    and the SHA-256 of its text. Evaluation finds the documents by their text, so on any
    machine it reads the ones training never saw: names are absolute paths, and with the
    library installed elsewhere a split by name would hold out other documents, most of
    them trained on (84 of 94 for the default corpus). A held-out text that is also a
    training document's text is left out: it was trained on."""
    train, val = corpus.split(val_fraction)
    trained = {text_sha256(d.text) for d in train}
    kept = [(d.name, text_sha256(d.text)) for d in val]
    return {
        "corpus": corpus.spec,
        "val_fraction": val_fraction,
        "documents": [{"name": n, "sha256": h} for n, h in kept if h not in trained],
    }


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


def _visible_files(folder: Path) -> list[Path]:
    """The files under `folder`, sorted, without hidden ones (a name starting with "." at
    any level below it: .git, .venv, editor files), as a glob's `*` and `**` skip them."""
    return sorted(
        f
        for f in folder.rglob("*")
        if f.is_file() and not any(part.startswith(".") for part in f.relative_to(folder).parts)
    )


def _expand(spec: str) -> list[Path]:
    """The files a spec names, each once: a file reached twice (overlapping globs, a
    symlink to a file already read, a symlinked folder loop under `**`) is read once, so
    no text lands in both the train and the held-out split."""
    paths: list[Path] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        if any(ch in part for ch in "*?["):
            matches = sorted(Path(p) for p in glob.glob(os.path.expanduser(part), recursive=True))
            files = [p for p in matches if p.is_file()]
            if not files:
                raise QkovError(
                    f"corpus glob {part!r} matches no file: fix the pattern (quote it so the "
                    "shell does not expand it) or drop it from --corpus"
                )
            paths += files
            continue
        p = Path(part).expanduser()
        if p.is_dir():
            paths += _visible_files(p)
        elif p.is_file():
            paths.append(p)
        else:
            raise QkovError(
                f"corpus {part!r} is not a file, folder or glob that exists: "
                "use --corpus stdlib, repeated-random, induction-task, or a path to text files"
            )
    seen: set[str] = set()
    unique = []
    for p in paths:
        real = os.path.realpath(p)
        if real not in seen:
            seen.add(real)
            unique.append(p)
    return unique


def absolute_spec(spec: str) -> str:
    """`spec` with each path or glob made absolute (and ~ expanded): what a run records,
    so that its corpus (qkov analyze's held-out documents, --resume) is found again from
    any folder. stdlib and the synthetic tasks are names, left as they are."""
    if spec == "stdlib" or spec in SYNTHETIC:
        return spec
    parts = (part.strip() for part in spec.split(","))
    return ",".join(os.path.abspath(os.path.expanduser(part)) for part in parts if part)


def read_text_files(paths: list[Path]) -> tuple[list[Document], list[str]]:
    """Read UTF-8 text; files that are binary (NUL bytes), not UTF-8 or unreadable are
    listed (their names), not read."""
    docs: list[Document] = []
    skipped: list[str] = []
    for p in paths:
        try:
            with open(p, "rb") as f:
                head = f.read(8192)  # a large binary file is refused without reading it all
                if b"\0" in head:
                    skipped.append(str(p))
                    continue
                raw = head + f.read()
        except OSError:
            skipped.append(str(p))
            continue
        try:
            text = raw.decode("utf-8")  # a BOM stays: dropping it would change the stdlib
            # corpus's fingerprint (two files have one), so its token cache and tokenizer
        except UnicodeDecodeError:
            skipped.append(str(p))
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
            f"corpus {spec!r} has {what} ({len(paths)} files, {len(skipped)} skipped): "
            "point --corpus at UTF-8 text files or use --corpus stdlib"
        )
    return Corpus(spec, docs, len(skipped), tuple(skipped))
