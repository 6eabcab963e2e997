"""The models `qkov demo` analyses, shipped inside the package (not to be confused with
qkov/model.py, the transformer itself): trained by `qkov train` on the Python standard
library; each folder holds the run's record (see TRAINING.md here). Imports no torch."""

from __future__ import annotations

from pathlib import Path

from qkov.errors import QkovError

DEMO_MODELS = Path(__file__).resolve().parent
NAMES = ("attn2", "attn1", "attn0")  # the main model first, as analyze expects


def shipped(name: str) -> Path:
    """The directory of a model shipped with qkov ("attn0", "attn1" or "attn2"), for
    `qkov.load(qkov.shipped("attn2"))` in examples and notebooks."""
    if name not in NAMES:
        raise QkovError(f"no shipped model {name!r}: use one of {', '.join(NAMES)}")
    path = DEMO_MODELS / name
    if not (path / "model.safetensors").is_file():
        raise QkovError(
            f"shipped model {name} is missing ({path / 'model.safetensors'}): reinstall "
            "qkov, or run `qkov demo --train` to train it"
        )
    return path
