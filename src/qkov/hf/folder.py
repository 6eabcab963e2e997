"""A Hugging Face model folder, read without `transformers`: config.json, the weights in
safetensors (one model.safetensors, or shards named by model.safetensors.index.json) and
tokenizer.json. Tensor shapes are read from the safetensors headers first, so a folder whose
config disagrees with its tensors is refused before anything is loaded. PyTorch `.bin`
weights are pickles and are never read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from qkov.checkpoint import SAFETENSORS_ERRORS, unreadable_safetensors
from qkov.config import ROTARY_SCALINGS
from qkov.errors import QkovError

CONFIG = "config.json"
SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
TOKENIZER = "tokenizer.json"
CONVERT_HINT = (
    "convert it to safetensors where transformers is installed: "
    "AutoModelForCausalLM.from_pretrained(DIR).save_pretrained(DIR) writes model.safetensors"
)


def is_hf_folder(path: Path) -> bool:
    """True when path/config.json names a `model_type` (qkov's own config.json has none)."""
    try:
        data = json.loads((Path(path) / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(data, dict) and "model_type" in data


def read_config(path: Path) -> dict[str, Any]:
    """config.json as a dict, or one QkovError line."""
    file = Path(path) / CONFIG
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise QkovError(f"{file} cannot be read as JSON ({e}): restore it") from None
    if not isinstance(data, dict):
        raise QkovError(f"{file} must be a JSON object: restore it")
    return data


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor lives, and its shape and dtype from the file's header."""

    file: Path
    shape: tuple[int, ...]
    dtype: str


def tensor_index(path: Path) -> dict[str, TensorRef]:
    """Every tensor of the folder's safetensors weights, by name, from the headers alone.

    Refuses a folder with only PyTorch .bin weights (pickle), an index that names a missing
    shard, and files that are not safetensors, each with one line."""
    path = Path(path)
    if (path / INDEX).is_file():
        try:
            weight_map = json.loads((path / INDEX).read_text(encoding="utf-8"))["weight_map"]
            files = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise QkovError(
                f"{path / INDEX} has no readable weight_map ({e}): restore it from the model's "
                "repository"
            ) from None
        missing = [f for f in files if not (path / f).is_file()]
        if missing:
            raise QkovError(
                f"{path} is missing shard {missing[0]} of {len(files)} named in {INDEX}"
                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                + ": download every shard into the folder"
            )
    elif (path / SINGLE).is_file():
        files = [SINGLE]
    else:
        bins = sorted(p.name for p in path.glob("*.bin"))
        if bins:
            raise QkovError(
                f"{path} holds only PyTorch weights ({bins[0]}), which are pickles that qkov "
                f"never loads (loading one can run code): {CONVERT_HINT}"
            )
        raise QkovError(
            f"{path} has no {SINGLE} or {INDEX}: a Hugging Face model folder needs its "
            "safetensors weights"
        )
    index: dict[str, TensorRef] = {}
    for name in files:
        file = path / name
        try:
            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():
                    sl = f.get_slice(key)
                    index[key] = TensorRef(file, tuple(sl.get_shape()), sl.get_dtype())
        except SAFETENSORS_ERRORS as e:
            raise unreadable_safetensors(
                file, e, "it may be truncated; download it again"
            ) from None
    return index


def read_tensors(index: dict[str, TensorRef], names: list[str]) -> dict[str, torch.Tensor]:
    """Load the named tensors, one file open at a time."""
    by_file: dict[Path, list[str]] = {}
    for name in names:
        by_file.setdefault(index[name].file, []).append(name)
    out: dict[str, torch.Tensor] = {}
    for file, keys in by_file.items():
        with safe_open(str(file), framework="pt") as f:
            for key in keys:
                out[key] = f.get_tensor(key)
    return out


def load_tokenizer(path: Path, d_vocab: int):
    """tokenizer.json of the folder (None if absent); refused if it has more tokens than the
    model's vocabulary (it belongs to another model)."""
    file = Path(path) / TOKENIZER
    if not file.is_file():
        return None
    from qkov.checkpoint import load_tokenizer as read

    tok = read(file)
    n = tok.get_vocab_size()
    if n > d_vocab:
        raise QkovError(
            f"{file} has {n} tokens but the model's vocabulary has {d_vocab} (vocab_size in "
            "config.json): the tokenizer belongs to another model; copy the model's own"
        )
    return tok


def download(repo_id: str, dest: Path | None = None) -> Path:
    """Fetch a model folder from the Hugging Face hub (config, safetensors, tokenizer only):
    the one place qkov uses the network, and only when asked (`--download`)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise QkovError(
            "--download needs huggingface_hub: pip install huggingface_hub, or download the "
            "folder yourself and pass its path"
        ) from None
    patterns = ["config.json", "*.safetensors", INDEX, TOKENIZER]
    try:
        where = snapshot_download(repo_id, allow_patterns=patterns, local_dir=dest)
    except Exception as e:  # network, authentication, unknown repository
        raise QkovError(f"downloading {repo_id} failed ({str(e).splitlines()[0][:160]})") from None
    return Path(where)


_REQUIRED = object()


def field(hf: dict[str, Any], key: str, default: Any = _REQUIRED, source: str = CONFIG) -> Any:
    """hf[key], or the default, or one QkovError line naming the missing key."""
    if key in hf and hf[key] is not None:
        return hf[key]
    if default is _REQUIRED:
        raise QkovError(f"{source} has no {key!r}: is it a complete Hugging Face config.json?")
    return default


# Hugging Face activation names -> qkov's (gelu_fast and gelu_pytorch_tanh are GPT-2's tanh
# approximation written differently).
ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_new",
    "gelu_fast": "gelu_new",
    "gelu_pytorch_tanh": "gelu_new",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}


def activation(hf: dict[str, Any], key: str, source: str) -> str:
    name = field(hf, key, source=source)
    if name not in ACTIVATIONS:
        raise QkovError(
            f"{source}: {key}={name!r} is not supported: qkov computes "
            + ", ".join(sorted(ACTIVATIONS))
        )
    return ACTIVATIONS[name]


def rope(
    hf: dict[str, Any], source: str, theta: float, fraction: float
) -> tuple[float, float, dict[str, Any] | None]:
    """(rope_theta, partial_rotary_factor, rotary_scaling) from transformers 5's
    rope_parameters or the older top-level keys. Of the scaled RoPE variants, linear and
    llama3 (Llama 3.1 and 3.2) rescale the frequencies once and are read; those that change
    with the sequence's length or scale the scores (dynamic, yarn, longrope, ...) are
    refused. An older config's rope_scaling takes precedence over rope_parameters, as
    transformers reads it."""
    key = "rope_scaling" if hf.get("rope_scaling") else "rope_parameters"
    params = hf.get(key) or {}
    if not isinstance(params, dict):
        raise QkovError(f"{source}: {key} must be a JSON object, got {params!r}: restore it")
    kind = params.get("rope_type", params.get("type", "default"))
    if kind != "default" and kind not in ROTARY_SCALINGS:
        raise QkovError(
            f"{source}: rope_type={kind!r} is not supported (qkov computes the default RoPE "
            "frequencies and their linear and llama3 scalings)"
        )
    theta = params.get("rope_theta", hf.get("rope_theta", hf.get("rotary_emb_base", theta)))
    fraction = params.get(
        "partial_rotary_factor", hf.get("partial_rotary_factor", hf.get("rotary_pct", fraction))
    )
    scaling = None
    if kind != "default":
        missing = [k for k in ROTARY_SCALINGS[kind] if k not in params]
        if missing:
            raise QkovError(f"{source}: {key} of rope_type {kind!r} has no {missing[0]!r}")
        scaling = {"rope_type": kind} | {k: params[k] for k in ROTARY_SCALINGS[kind]}
    return float(theta), float(fraction), scaling
