"""Token data for training: a cached on-disk token stream (text) or synthetic sequences.

Batches are a pure function of (seed, step), so a resumed run sees exactly the batches
an uninterrupted run would have seen."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer
from tqdm import tqdm

from qkov.data.corpus import heldout_record, load_corpus
from qkov.data.synthetic import SYNTHETIC_TASKS, InductionTask, RepeatedRandom
from qkov.data.tokenizer import EOT, train_tokenizer
from qkov.errors import QkovError

CACHE_VERSION = 1


def default_cache_dir() -> Path:
    return Path(os.environ.get("QKOV_CACHE", Path.home() / ".cache" / "qkov"))


@dataclass
class TokenStream:
    """Train and validation token streams (numpy memmaps) with their tokenizer."""

    train: np.ndarray
    val: np.ndarray
    tokenizer: Tokenizer
    n_documents: int
    skipped: int
    heldout: dict[str, Any] | None = None  # `heldout_record`: what a run writes to heldout.json

    @property
    def d_vocab(self) -> int:
        return self.tokenizer.get_vocab_size()

    def token_counts(self) -> np.ndarray:
        """[d_vocab] int64: how often each token id occurs in the train stream (what the
        model was trained on; the validation split is not counted)."""
        return np.bincount(np.asarray(self.train), minlength=self.d_vocab).astype(np.int64)

    def _windows(self, stream: np.ndarray, starts: np.ndarray, n: int) -> torch.Tensor:
        idx = starts[:, None] + np.arange(n + 1)[None, :]
        return torch.from_numpy(stream[idx].astype(np.int64))

    def _check(self, stream: np.ndarray, n_ctx: int, what: str) -> None:
        if len(stream) < n_ctx + 2:
            raise QkovError(
                f"the {what} split has only {len(stream)} tokens, fewer than n_ctx+2="
                f"{n_ctx + 2}: use a bigger corpus or a smaller --n-ctx"
            )

    def train_batch(self, step: int, batch_size: int, n_ctx: int, seed: int) -> torch.Tensor:
        """[batch, n_ctx + 1] random windows of the train stream, fixed by (seed, step)."""
        self._check(self.train, n_ctx, "train")
        rng = np.random.default_rng([seed, step])
        starts = rng.integers(0, len(self.train) - n_ctx - 1, size=batch_size)
        return self._windows(self.train, starts, n_ctx)

    def val_batches(self, batch_size: int, n_ctx: int, n_batches: int) -> list[torch.Tensor]:
        """Evenly spaced, fixed windows of the held-out stream; of the train stream, with a
        notice on stderr, when the held-out split is shorter than n_ctx + 2 tokens (a
        one-document corpus): its "val loss" is then a loss on training text."""
        stream = self.val if len(self.val) >= n_ctx + 2 else self.train
        self._check(stream, n_ctx, "validation")
        if stream is self.train:
            print(
                f"qkov: the held-out split has {len(self.val)} tokens, fewer than n_ctx+2="
                f"{n_ctx + 2}: val loss is measured on training text; add documents to the "
                "corpus (the split is by document) for a held-out loss",
                file=sys.stderr,
            )
        total = batch_size * n_batches
        starts = np.linspace(0, len(stream) - n_ctx - 1, num=total).astype(np.int64)
        return [
            self._windows(stream, starts[i : i + batch_size], n_ctx)
            for i in range(0, total, batch_size)
        ]


def _encode_split(tok: Tokenizer, texts: list[str], path: Path, dtype, desc: str) -> int:
    """Encode documents in batches (parallel in Rust), separated by <|endoftext|>, to a file."""
    eot = tok.token_to_id(EOT)
    n = 0
    with open(path, "wb") as f:
        step = 64
        for i in tqdm(
            range(0, len(texts), step), desc=desc, unit="batch", leave=False, disable=None
        ):
            for enc in tok.encode_batch(texts[i : i + step]):
                arr = np.asarray(enc.ids + [eot], dtype=dtype)
                f.write(arr.tobytes())
                n += len(arr)
    return n


def prepare(
    corpus: str = "stdlib",
    vocab_size: int = 4096,
    cache_dir: str | Path | None = None,
    val_fraction: float = 0.05,
) -> TokenStream | RepeatedRandom | InductionTask:
    """Load the corpus, train (or reuse) its tokenizer and encode it, caching on disk.

    The cache key is the corpus content hash and the vocab size: a second run with the
    same corpus reads the memmaps and re-encodes nothing."""
    if corpus in SYNTHETIC_TASKS:
        return SYNTHETIC_TASKS[corpus](d_vocab=vocab_size)
    docs = load_corpus(corpus)
    if docs.skipped:
        names = ", ".join(docs.skipped_files[:3]) + (", ..." if docs.skipped > 3 else "")
        print(
            f"qkov: corpus {corpus!r}: {docs.skipped} file(s) skipped as binary, unreadable or "
            f"not UTF-8 ({names}); convert them to UTF-8 to train on them",
            file=sys.stderr,
        )
    key = f"{docs.fingerprint()}-v{vocab_size}-c{CACHE_VERSION}"
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = root / key
    if not (folder / "meta.json").is_file():
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{key}."))
        try:
            train_docs, val_docs = docs.split(val_fraction)
            tok = train_tokenizer((d.text for d in train_docs), vocab_size)
            dtype = np.uint16 if tok.get_vocab_size() <= 2**16 else np.uint32
            n_train = _encode_split(
                tok, [d.text for d in train_docs], tmp / "train.bin", dtype, "encode train"
            )
            n_val = _encode_split(
                tok, [d.text for d in val_docs], tmp / "val.bin", dtype, "encode val"
            )
            tok.save(str(tmp / "tokenizer.json"))
            meta = {
                "corpus": corpus,
                "vocab_size": tok.get_vocab_size(),
                "dtype": np.dtype(dtype).name,
                "n_train": n_train,
                "n_val": n_val,
                "n_documents": len(docs.documents),
                "skipped": docs.skipped,
            }
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
            try:
                os.replace(tmp, folder)
            except OSError:  # another process finished the same cache first
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    meta = json.loads((folder / "meta.json").read_text())
    dtype = np.dtype(meta["dtype"])

    def mm(name: str, n: int) -> np.ndarray:
        return (
            np.memmap(folder / name, dtype=dtype, mode="r", shape=(n,)) if n else np.zeros(0, dtype)
        )

    return TokenStream(
        train=mm("train.bin", meta["n_train"]),
        val=mm("val.bin", meta["n_val"]),
        tokenizer=Tokenizer.from_file(str(folder / "tokenizer.json")),
        n_documents=meta["n_documents"],
        skipped=meta["skipped"],
        heldout=heldout_record(docs, val_fraction),
    )
