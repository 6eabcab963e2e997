"""qkov model -> TransformerLens: a TL state dict and config, a HookedTransformer, or a folder.

The export is exact for every qkov model but a gated MLP with a nonzero b_in (TL adds b_in
after the gate; such a model is refused): each weight goes to its TL key
(transformer_lens_format.TL_KEYS); a bias=False model gets TL's biases as zeros;
normalization "none", "rms", "layernorm", "rmsnorm" are TL's None, "RMSPre", "LN", "RMS";
positional="none" is TL's "standard" with W_pos = 0; rotary positions, parallel and gated
MLPs and grouped-query attention are TL's options of the same meaning."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from qkov.errors import QkovError
from qkov.interop.transformer_lens_format import BIASES, BUFFERS, TL_KEYS, require_tl, tl_key
from qkov.model import Transformer
from qkov.weights import weight_shapes

TL_NORMALIZATION = {"none": None, "rms": "RMSPre", "layernorm": "LN", "rmsnorm": "RMS"}
TL_POSITIONAL = {  # positional="none" is TL's "standard" with W_pos = 0
    "shortformer": "shortformer",
    "standard": "standard",
    "none": "standard",
    "rotary": "rotary",
}


def to_transformer_lens(model: Transformer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """qkov model -> (TL state dict, TL config dict). Exact.

    A round trip through convert_state_dict gives back the same weights; a bias=True model
    whose biases are all zero comes back with bias=False (TL has no bias switch)."""
    cfg = model.cfg
    w = {k: v.detach().to("cpu").clone() for k, v in model.weights().items()}
    if cfg.gated_mlp and cfg.bias and bool(w["b_in"].abs().max() > 0):
        raise QkovError(
            "exporting to TransformerLens does not cover a gated MLP with a nonzero b_in: TL "
            "adds b_in after the gate (act(x W_gate) * (x W_in) + b_in), qkov inside it "
            "(act(x W_gate) * (x W_in + b_in)); a Hugging Face gated MLP has no b_in"
        )
    if not cfg.bias:  # TL always has biases: zeros of the shapes a bias=True model has
        full = weight_shapes(dataclasses.replace(cfg, bias=True))
        w |= {b: torch.zeros(full[b], dtype=w["W_E"].dtype) for b in BIASES if b in full}
    sd: dict[str, Tensor] = {}
    grouped = cfg.n_kv_heads < cfg.n_heads
    for name, value in w.items():
        if "{l}" in TL_KEYS[name]:
            sd |= {tl_key(name, l, grouped): value[l].contiguous() for l in range(cfg.n_layers)}
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
        "eps": cfg.norm_eps,
        "seed": cfg.seed,
        "positional_embedding_type": TL_POSITIONAL[cfg.positional],
        "parallel_attn_mlp": cfg.parallel,
        "gated_mlp": cfg.gated_mlp,
        "n_key_value_heads": cfg.n_kv_heads if grouped else None,
    }
    if cfg.positional == "rotary":
        tl_cfg |= {"rotary_dim": cfg.rotary_dim, "rotary_base": cfg.rotary_base}
        tl_cfg |= _tl_rotary_scaling(cfg.rotary_scaling)
    return sd, tl_cfg


def _tl_rotary_scaling(scaling: dict[str, Any] | None) -> dict[str, Any]:
    """qkov's rotary_scaling as TL's config fields: llama3 is TL's NTK-by-parts, linear its
    rotary_scaling_factor."""
    if scaling is None:
        return {}
    if scaling["rope_type"] == "linear":
        return {"rotary_scaling_factor": float(scaling["factor"])}
    return {
        "use_NTK_by_parts_rope": True,
        "NTK_by_parts_factor": float(scaling["factor"]),
        "NTK_by_parts_low_freq_factor": float(scaling["low_freq_factor"]),
        "NTK_by_parts_high_freq_factor": float(scaling["high_freq_factor"]),
        "NTK_original_ctx_len": int(scaling["original_max_position_embeddings"]),
    }


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
