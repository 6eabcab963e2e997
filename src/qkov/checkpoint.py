"""Checkpoint directories: config.json + model.safetensors (+ tokenizer.json).

Weights load through safetensors only (no pickle); every write is atomic."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from qkov.config import ModelConfig
from qkov.errors import QkovError
from qkov.io import atomic_save_safetensors, atomic_write_text
from qkov.model import AttnOnlyTransformer

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
TOKENIZER = "tokenizer.json"


def save_model(model: AttnOnlyTransformer, out_dir: str | Path) -> None:
    """Write config.json and model.safetensors (and tokenizer.json if the model has one)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_save_safetensors(out / WEIGHTS, model.weights(), metadata={"format": "qkov"})
    model.cfg.save(out / CONFIG)
    if model.tokenizer is not None:
        atomic_write_text(out / TOKENIZER, model.tokenizer.to_str())


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file, turning any corruption into one clear QkovError."""
    if not path.is_file():
        raise QkovError(f"{path} does not exist: is this a qkov checkpoint directory?")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise QkovError(
            f"{path} is not a readable safetensors file ({msg}): "
            "it may be truncated or corrupt; restore it or retrain"
        ) from None


def load_tokenizer(path: Path):
    """Load a HF tokenizers tokenizer.json, or raise QkovError."""
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception subclass
        raise QkovError(
            f"{path} is not a valid tokenizer.json ({str(e).splitlines()[0][:120]}): "
            "restore it from the training run"
        ) from None


def load(path: str | Path, device: str | torch.device = "cpu") -> AttnOnlyTransformer:
    """Load a checkpoint directory; the tokenizer (if present) is at `model.tokenizer`."""
    path = Path(path)
    if not path.exists():
        raise QkovError(f"{path} does not exist: pass a directory written by `qkov train`")
    if not path.is_dir():
        raise QkovError(f"{path} is not a directory: pass a directory written by `qkov train`")
    if not (path / CONFIG).is_file():
        raise QkovError(
            f"{path} has no {CONFIG}: pass a directory written by `qkov train` "
            "(it holds config.json and model.safetensors)"
        )
    cfg = ModelConfig.load(path / CONFIG)
    weights = load_safetensors(path / WEIGHTS)
    model = AttnOnlyTransformer(cfg)
    model.load_weights(weights, source=str(path / WEIGHTS))
    if (path / TOKENIZER).is_file():
        tok = load_tokenizer(path / TOKENIZER)
        if tok.get_vocab_size() > cfg.d_vocab:
            raise QkovError(
                f"{path / TOKENIZER} has {tok.get_vocab_size()} tokens but the model has "
                f"d_vocab={cfg.d_vocab}: the tokenizer belongs to another model"
            )
        model.tokenizer = tok
    return model.to(device)


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise QkovError(f"{path} cannot be read as JSON ({e})") from None
