"""The tiny `qkov train` command line the CLI tests share (seconds on a CPU)."""

from __future__ import annotations

from pathlib import Path

TINY = {"n_layers": 1, "n_heads": 2, "d_model": 16, "n_ctx": 16, "vocab_size": 300, "batch_size": 2}


def tiny_flags(progress: bool = False, **options: object) -> list[str]:
    """Flags of a tiny run; keyword options add or override them (n_ctx=8: --n-ctx 8).
    Progress output is off unless `progress`."""
    flags: list[str] = []
    for name, value in {**TINY, **options}.items():
        flags += [f"--{name.replace('_', '-')}", str(value)]
    return flags + ([] if progress else ["--no-progress"])


def tiny_train(
    corpus: Path | str, out: Path | str, progress: bool = False, **options: object
) -> list[str]:
    """argv for `qkov train` of a tiny model on corpus into out."""
    flags = tiny_flags(progress, **options)
    return ["train", "--corpus", str(corpus), *flags, "--out", str(out)]
