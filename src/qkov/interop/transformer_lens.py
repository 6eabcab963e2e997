"""TransformerLens interop: import TL models into qkov's model and export qkov models to TL,
both exactly (same logits), for every pre-norm TL model qkov's Transformer can compute.

The entry points live here; the work is split by concept:

    transformer_lens_format   TL's key layout, config check (what is refused) and reading
    transformer_lens_convert  convert_state_dict: TL state dict -> qkov config and weights
    transformer_lens_export   qkov -> TL state dict, HookedTransformer or folder

fold_ln is accepted everywhere for old callers and no longer needed: LayerNorm imports
exactly (transformer_lens_convert's docstring). Every public name of those modules is
importable from here and from qkov.interop.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from qkov.errors import QkovError
from qkov.interop.transformer_lens_convert import Converted, convert_state_dict
from qkov.interop.transformer_lens_export import (
    save_transformer_lens,
    to_hooked_transformer,
    to_transformer_lens,
)
from qkov.interop.transformer_lens_format import INSTALL_HINT, require_tl
from qkov.model import Transformer

__all__ = [
    "INSTALL_HINT",
    "Converted",
    "convert_state_dict",
    "from_hooked_transformer",
    "from_pretrained",
    "from_transformer_lens",
    "load_transformer_lens",
    "save_transformer_lens",
    "to_hooked_transformer",
    "to_transformer_lens",
]


def _read_weights(path: Path) -> dict[str, Tensor]:
    """safetensors, or .pt/.pth through torch.load(weights_only=True): never plain pickle."""
    from qkov.checkpoint import PICKLE_SUFFIXES, load_pt_weights, load_safetensors

    if path.suffix == ".safetensors":
        return load_safetensors(path)
    if path.suffix in PICKLE_SUFFIXES:
        return load_pt_weights(path)
    raise QkovError(f"{path}: unknown weights format; use .safetensors, .pt or .pth")


def load_transformer_lens(
    path: str | Path, tl_cfg: Any = None, *, fold_ln: bool = False
) -> Transformer:
    """Load a TL checkpoint from a weights file or a folder (config.json + one weights file).

    tl_cfg: the TL config (dict or HookedTransformerConfig); default: config.json beside
    the weights."""
    path = Path(path)
    if not path.exists():
        raise QkovError(f"{path} does not exist: pass a TL weights file or folder")
    folder = path if path.is_dir() else path.parent
    if path.is_dir():
        found = sorted(p for ext in ("*.safetensors", "*.pt", "*.pth") for p in path.glob(ext))
        if len(found) != 1:
            raise QkovError(
                f"{path} holds {len(found)} weights files ({[p.name for p in found]}): "
                "it needs exactly one .safetensors, .pt or .pth file; pass the file instead"
            )
        path = found[0]
    if tl_cfg is None:
        cfg_path = folder / "config.json"
        if not cfg_path.is_file():
            raise QkovError(
                f"no TL config for {path}: put config.json (HookedTransformerConfig fields) "
                "beside it or pass tl_cfg"
            )
        from qkov.checkpoint import read_json

        tl_cfg = read_json(cfg_path)
        if "positional" in tl_cfg and "positional_embedding_type" not in tl_cfg:
            raise QkovError(f"{cfg_path} is a qkov config: load that folder with qkov.load")
    converted = convert_state_dict(_read_weights(path), tl_cfg, fold_ln=fold_ln, source=str(path))
    return converted.model()


def from_hooked_transformer(model: Any, *, fold_ln: bool = False) -> Transformer:
    """A qkov copy of an in-memory TL HookedTransformer (weights copied, on CPU)."""
    converted = convert_state_dict(
        model.state_dict(), model.cfg, fold_ln=fold_ln, source="HookedTransformer"
    )
    return converted.model()


def from_transformer_lens(source: Any, tl_cfg: Any = None, *, fold_ln: bool = False) -> Transformer:
    """Import a TL model: a HookedTransformer, a path, or a state dict (with tl_cfg)."""
    if isinstance(source, (str, Path)):
        return load_transformer_lens(source, tl_cfg, fold_ln=fold_ln)
    if isinstance(source, Mapping):
        if tl_cfg is None:
            raise QkovError("a TL state dict needs its config: pass tl_cfg")
        return convert_state_dict(source, tl_cfg, fold_ln=fold_ln).model()
    if hasattr(source, "state_dict") and hasattr(source, "cfg"):
        return from_hooked_transformer(source, fold_ln=fold_ln)
    raise QkovError(f"cannot import a {type(source).__name__} as a TransformerLens model")


def from_pretrained(
    name: str, *, allow_download: bool = False, fold_ln: bool = False
) -> Transformer:
    """Fetch a TL model by name from the Hugging Face hub (network!) and import it.

    Refuses unless allow_download=True: nothing in qkov downloads by default."""
    if not allow_download:
        raise QkovError(
            f"from_pretrained({name!r}) downloads from the hub: pass allow_download=True, "
            "or save the model locally and use load_transformer_lens"
        )
    tl = require_tl()
    hooked = tl.HookedTransformer.from_pretrained_no_processing(name, device="cpu")
    return from_hooked_transformer(hooked, fold_ln=fold_ln)
