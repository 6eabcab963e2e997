"""Checkpoint directories: config.json + model.safetensors (+ tokenizer.json, and
token_counts.json: how often each token id occurs in the training split).

Weights load through safetensors only (no pickle); every write is atomic."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from qkov.config import ModelConfig
from qkov.errors import QkovError
from qkov.io import atomic_save_safetensors, atomic_write_text
from qkov.model import Transformer, check_weight_shapes

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
TOKENIZER = "tokenizer.json"
TOKEN_COUNTS = "token_counts.json"


def save_model(model: Transformer, out_dir: str | Path) -> None:
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
    except SAFETENSORS_ERRORS as e:
        raise unreadable_safetensors(
            path, e, "it may be truncated or corrupt; restore it or retrain"
        ) from None


SAFETENSORS_ERRORS = (SafetensorError, OSError, ValueError, RuntimeError)


def unreadable_safetensors(path: Path, error: Exception, remedy: str) -> QkovError:
    """The one line for a safetensors file that cannot be read: its path, the reader's
    first line of complaint, and `remedy`."""
    msg = str(error).splitlines()[0] if str(error) else type(error).__name__
    return QkovError(f"{path} is not a readable safetensors file ({msg}): {remedy}")


def weights_step(run_dir: str | Path) -> int | None:
    """The training step model.safetensors was written at (its metadata, as `qkov train`
    records it), or None: no such record (a saved or imported model) or no file."""
    from safetensors import safe_open

    path = Path(run_dir) / WEIGHTS
    try:
        with safe_open(str(path), "pt") as f:
            step = (f.metadata() or {}).get("step")
    except (OSError, SafetensorError):
        return None
    return int(step) if step is not None and str(step).isdigit() else None


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


@dataclass(frozen=True)
class FolderSize:
    """What a checkpoint folder becomes when `load` reads it, known without its weights:
    the model's config, the memory the load holds at its peak (the weights as stored, held
    while the float32 model is filled), and whether it has a tokenizer."""

    cfg: ModelConfig
    load_bytes: int
    has_tokenizer: bool


def folder_size(path: str | Path) -> FolderSize:
    """A qkov or Hugging Face checkpoint folder's `FolderSize`, from config.json and the
    safetensors headers (a Hugging Face folder is checked as `qkov.hf.inspect_hf` does). A
    path that is no checkpoint folder is one QkovError line."""
    from qkov.hf import inspect_hf, is_hf_folder

    path = Path(path)
    _check_folder(path)
    if is_hf_folder(path):
        folder = inspect_hf(path)
        return FolderSize(
            folder.cfg, folder.load_bytes(torch.float32), folder.tokenizer is not None
        )
    if is_tl_folder(path):
        from qkov.interop.transformer_lens_format import cfg_dict, check_config

        cfg = check_config(cfg_dict(read_json(path / CONFIG)), str(path / CONFIG))[0]
    else:
        cfg = ModelConfig.load(path / CONFIG)
    stored = (path / WEIGHTS).stat().st_size if (path / WEIGHTS).is_file() else 0
    return FolderSize(cfg, stored + 4 * cfg.n_params, (path / TOKENIZER).is_file())


def _check_folder(path: Path) -> None:
    """Refuse, with one line, a path that is no checkpoint folder (no config.json)."""
    if not path.exists():
        raise QkovError(
            f"{path} does not exist: pass a directory written by `qkov train`, or a Hugging "
            "Face model folder (`--download REPO_ID` or qkov.hf.download fetches one)"
        )
    if not path.is_dir():
        raise QkovError(
            f"{path} is not a directory: pass a directory written by `qkov train`, or a "
            "Hugging Face model folder"
        )
    if not (path / CONFIG).is_file():
        raise QkovError(
            f"{path} has no {CONFIG}: pass a directory written by `qkov train` "
            "(it holds config.json and model.safetensors)"
        )
    state = path / "train_state.safetensors"  # qkov.train_state.STATE (it imports this module)
    run = (path / "train_config.json").is_file()
    if run and not state.exists() and not (path / WEIGHTS).exists():  # before a checkpoint
        raise QkovError(_no_weights_yet(path))


def _no_weights_yet(path: Path) -> str:
    """The line for a run directory without weights: one before its first checkpoint, still
    training (the process holding its lock) or stopped before it (nothing kept)."""
    from qkov.runlock import writer_pid

    every = _ckpt_interval(path)
    first = (
        f"its first checkpoint (step {every:,}, --ckpt-interval)"
        if every
        else "its first checkpoint"
    )
    pid = writer_pid(path)
    if pid is not None:
        return (
            f"{path} has no {WEIGHTS} yet: process {pid} is training it and writes {first}; "
            "try again then"
        )
    return (
        f"{path} has no {WEIGHTS}: its training stopped before {first}, so no weights were "
        "kept; train it again (a smaller --ckpt-interval keeps weights sooner)"
    )


def _ckpt_interval(run_dir: Path) -> int | None:
    """A run's --ckpt-interval from its train_config.json, or None where unreadable."""
    every = (read_train_config(run_dir) or {}).get("ckpt_interval")
    return every if isinstance(every, int) and not isinstance(every, bool) else None


def read_train_config(run_dir: str | Path) -> dict | None:
    """A run's train_config.json as written (TrainConfig's fields), or None where there is
    none (a checkpoint saved by save_model, a Hugging Face folder) or it cannot be read."""
    try:
        record = json.loads((Path(run_dir) / "train_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def check_folders(
    paths: list[str | Path], *, text: str | None = None, for_analysis: bool = True
) -> None:
    """Every check `load(path, for_analysis=for_analysis)` makes before it reads a weight,
    made for each of `paths` before the first is loaded, so a bad later folder loses no
    work: each is a checkpoint folder (`folder_size`); a Hugging Face folder (and with
    for_analysis its fold) fits in the memory available (`qkov.hf.check_memory`; the
    folders are loaded one at a time); and with `text` (the work that reads text through
    each model, for the refusal's line) each has a tokenizer."""
    from qkov.data.tokenizer import no_tokenizer
    from qkov.hf import check_memory, inspect_hf, is_hf_folder

    for path in map(Path, paths):
        _check_folder(path)
        hf = inspect_hf(path) if is_hf_folder(path) else None  # its headers, read once
        has_tokenizer = folder_size(path).has_tokenizer if hf is None else hf.tokenizer is not None
        if text is not None and not has_tokenizer:
            raise QkovError(no_tokenizer(str(path), text))
        if hf is not None:
            check_memory(hf, torch.float32, analysis=for_analysis)


def load(
    path: str | Path, device: str | torch.device = "cpu", *, for_analysis: bool = False
) -> Transformer:
    """Load a checkpoint directory (a qkov run, a Hugging Face folder of a GPT-2, GPT-NeoX
    or Llama-family model: `qkov.hf`, or a TransformerLens folder as
    `qkov.interop.save_transformer_lens` writes it); the tokenizer (if present) is at
    `model.tokenizer`.
    A Hugging Face folder that would not fit in the memory available is refused before a
    weight is read; for_analysis counts the fold the analyses make too (`qkov.hf.load_hf`)."""
    path = Path(path)
    _check_folder(path)
    from qkov.hf import is_hf_folder, load_hf  # a Hugging Face folder (GPT-2, Pythia, Llama)

    if is_hf_folder(path):
        return load_hf(path, device, for_analysis=for_analysis)
    if is_tl_folder(path):
        model = _load_tl_folder(path)
    else:
        model = _load_qkov_folder(path)
    if (path / TOKENIZER).is_file():
        tok = load_tokenizer(path / TOKENIZER)
        if tok.get_vocab_size() > model.cfg.d_vocab:
            raise QkovError(
                f"{path / TOKENIZER} has {tok.get_vocab_size()} tokens but the model has "
                f"d_vocab={model.cfg.d_vocab}: the tokenizer belongs to another model"
            )
        model.tokenizer = tok
    if (path / TOKEN_COUNTS).is_file():
        model.token_counts = read_token_counts(path / TOKEN_COUNTS, model.cfg.d_vocab)
    return model.to(device)


def is_tl_folder(path: Path) -> bool:
    """True when path/config.json is a TransformerLens config (HookedTransformerConfig's
    fields, as `qkov.interop.save_transformer_lens` writes them): qkov's has `positional`,
    TL's `positional_embedding_type` or `normalization_type`."""
    try:
        data = json.loads((Path(path) / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    keys = ("positional_embedding_type", "normalization_type")
    return isinstance(data, dict) and "positional" not in data and any(k in data for k in keys)


def _load_tl_folder(path: Path) -> Transformer:
    """A TransformerLens folder's model, converted exactly (`qkov.interop`; no TL needed),
    from its model.safetensors only: its .pt weights are read in Python, on request."""
    from qkov.interop import load_transformer_lens

    if not (path / WEIGHTS).is_file():
        raise QkovError(
            f"{path} is a TransformerLens folder without {WEIGHTS}: the commands read "
            "safetensors only; qkov.interop.load_transformer_lens(FILE) reads a .pt in Python"
        )
    return load_transformer_lens(path / WEIGHTS, read_json(path / CONFIG))


def _load_qkov_folder(path: Path) -> Transformer:
    """A folder `qkov train` (or `qkov.save_model`) wrote."""
    cfg = ModelConfig.load(path / CONFIG)
    weights = load_safetensors(path / WEIGHTS)
    check_weight_shapes(
        cfg, weights, str(path / WEIGHTS)
    )  # before allocating what config.json asks
    model = Transformer.empty(cfg)  # every weight is then written
    model.load_weights(weights, source=str(path / WEIGHTS))
    return model


def token_counts_record(counts: list[int], corpus: str) -> dict:
    """token_counts.json: {"counts": [count per token id], "n_tokens", "corpus", "split"}."""
    return {"counts": counts, "n_tokens": sum(counts), "corpus": corpus, "split": "train"}


def write_token_counts(path: Path, counts: list[int], corpus: str) -> None:
    atomic_write_text(Path(path), json.dumps(token_counts_record(counts, corpus)) + "\n")


def read_token_counts(path: Path, d_vocab: int) -> torch.Tensor:
    """The counts of a token_counts.json as a LongTensor [d_vocab], or QkovError."""
    rec = read_json(path)
    counts = rec.get("counts") if isinstance(rec, dict) else None
    if (
        not isinstance(counts, list)
        or len(counts) != d_vocab
        or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts)
    ):
        raise QkovError(
            f'{path} must hold "counts": {d_vocab} non-negative integers (one per token id '
            "of the model): restore it from the training run or delete it"
        )
    return torch.tensor(counts, dtype=torch.long)


PICKLE_SUFFIXES = (".pt", ".pth")


def load_pt_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a PyTorch .pt/.pth file, read only with torch.load(weights_only=True).

    weights_only=True unpickles tensors and plain containers and refuses every other
    object, so a file cannot run code on load. Anything but .pt/.pth is refused: qkov
    reads weights as safetensors (and configs as JSON) everywhere else."""
    path = Path(path)
    if path.suffix not in PICKLE_SUFFIXES:
        raise QkovError(
            f"{path}: only .pt/.pth files are read with torch.load(weights_only=True); "
            "qkov never unpickles other files: convert the weights to .safetensors"
        )
    if not path.is_file():
        raise QkovError(f"{path} does not exist: pass a .pt/.pth file of tensors")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for refused objects; many kinds for corrupt files
        lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", str(e)).splitlines()]
        why = [ln for ln in lines if ln.startswith("WeightsUnpickler error:")]  # the refusal
        msg = (why or [ln for ln in lines if ln] or [type(e).__name__])[0]
        msg = msg.split(". Please")[0][:160]  # not torch's advice to allow the global
        raise QkovError(
            f"{path} was refused by torch.load(weights_only=True) ({msg}): it holds objects "
            "other than tensors (loading it fully could run code) or is corrupt; "
            "save a plain state dict of tensors or convert it to .safetensors"
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise QkovError(
            f"{path} does not hold a flat dict of named tensors (got {type(obj).__name__}): "
            "save model.state_dict() or convert it to .safetensors"
        )
    return obj


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:  # ValueError: bad JSON or not UTF-8
        raise QkovError(f"{path} cannot be read as JSON ({e}): restore or regenerate it") from None
