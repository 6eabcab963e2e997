"""qkov model -> TransformerLens: a TL state dict and config, a HookedTransformer, or a folder.

The export is exact for every qkov model: each weight goes to its TL key
(transformer_lens_format.TL_KEYS); a bias=False model gets TL's biases as zeros;
normalization "none", "rms", "layernorm", "rmsnorm" are TL's None, "RMSPre", "LN", "RMS";
positional="none" is TL's "standard" with W_pos = 0."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from qkov.errors import QkovError
from qkov.interop.transformer_lens_format import BIASES, BUFFERS, TL_KEYS, require_tl, tl_key
from qkov.model import RMS_EPS, Transformer
from qkov.weights import weight_shapes

TL_NORMALIZATION = {"none": None, "rms": "RMSPre", "layernorm": "LN", "rmsnorm": "RMS"}


def to_transformer_lens(model: Transformer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """qkov model -> (TL state dict, TL config dict). Exact.

    A round trip through convert_state_dict gives back the same weights; a bias=True model
    whose biases are all zero comes back with bias=False (TL has no bias switch)."""
    cfg = model.cfg
    unsupported = {
        "positional='rotary'": cfg.positional == "rotary",
        "parallel": cfg.parallel,
        "gated_mlp": cfg.gated_mlp,
        f"n_kv_heads={cfg.n_kv_heads}": cfg.n_kv_heads != cfg.n_heads,
        f"norm_eps={cfg.norm_eps}": cfg.norm_eps != RMS_EPS,
    }
    if any(unsupported.values()):
        raise QkovError(
            "exporting to TransformerLens does not cover "
            + ", ".join(k for k, v in unsupported.items() if v)
            + ": TransformerLens export needs standard, shortformer or no positions, a plain "
            f"MLP, n_kv_heads = n_heads and norm_eps={RMS_EPS} (for a model imported from a "
            "Hugging Face checkpoint, load that checkpoint in TransformerLens itself)"
        )
    w = {k: v.detach().to("cpu").clone() for k, v in model.weights().items()}
    if not cfg.bias:  # TL always has biases: zeros of the shapes a bias=True model has
        full = weight_shapes(dataclasses.replace(cfg, bias=True))
        w |= {b: torch.zeros(full[b], dtype=w["W_E"].dtype) for b in BIASES if b in full}
    sd: dict[str, Tensor] = {}
    for name, value in w.items():
        if "{l}" in TL_KEYS[name]:
            sd |= {tl_key(name, l): value[l].contiguous() for l in range(cfg.n_layers)}
        else:
            sd[tl_key(name)] = value
    tl_cfg = {
        "n_layers": cfg.n_layers,
        "d_model": cfg.d_model,
        "n_ctx": cfg.n_ctx,
        "d_head": cfg.d_head,
        "n_heads": cfg.n_heads,
        "d_vocab": cfg.d_vocab,
        "d_vocab_out": cfg.d_vocab,
        "attn_only": not cfg.d_mlp,
        "d_mlp": cfg.d_mlp or None,
        "act_fn": cfg.act_fn if cfg.d_mlp else None,
        "normalization_type": TL_NORMALIZATION[cfg.normalization],
        "eps": RMS_EPS,
        "seed": cfg.seed,
        "positional_embedding_type": "shortformer"
        if cfg.positional == "shortformer"
        else "standard",
    }
    return sd, tl_cfg


def to_hooked_transformer(model: Transformer) -> Any:
    """qkov model -> a TL HookedTransformer with the same weights (on CPU, float32)."""
    tl = require_tl()
    sd, tl_cfg = to_transformer_lens(model)
    hooked = tl.HookedTransformer(tl.HookedTransformerConfig(**tl_cfg, device="cpu"))
    result = hooked.load_state_dict({k: v.float() for k, v in sd.items()}, strict=False)
    leftover = [k for k in result.missing_keys if k.rsplit(".", 1)[-1] not in BUFFERS]
    if leftover or result.unexpected_keys:
        raise QkovError(
            f"TL rejected the exported weights (missing {leftover}, unexpected "
            f"{result.unexpected_keys}): is transformer-lens 3.9.0 installed?"
        )
    return hooked.eval()


def save_transformer_lens(model: Transformer, out_dir: str | Path) -> Path:
    """Write a TL-format folder: config.json (TL config) + model.safetensors (TL keys)."""
    from qkov.io import atomic_save_safetensors, atomic_write_text

    out = Path(out_dir)
    sd, tl_cfg = to_transformer_lens(model)
    atomic_save_safetensors(out / "model.safetensors", sd, metadata={"format": "transformer_lens"})
    atomic_write_text(out / "config.json", json.dumps(tl_cfg, indent=2, sort_keys=True) + "\n")
    return out
