"""qkov model -> TransformerLens: a TL state dict and config, a HookedTransformer, or a folder.

The export is exact: qkov's bias-free model is TL's with every bias zero, and
normalization="rms" is TL's weightless "RMSPre" (key layout: transformer_lens_format)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from qkov.errors import QkovError
from qkov.interop.transformer_lens_format import BUFFERS, require_tl
from qkov.model import RMS_EPS, AttnOnlyTransformer, require_attention_only


def to_transformer_lens(model: AttnOnlyTransformer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """qkov model -> (TL state dict with zero biases, TL config dict). Exact.

    positional="none" becomes TL "standard" with W_pos = 0."""
    require_attention_only(model, "to_transformer_lens")
    cfg = model.cfg
    w = {k: v.detach().to("cpu").clone() for k, v in model.weights().items()}
    H, Dh, D = cfg.n_heads, cfg.d_head, cfg.d_model
    sd: dict[str, Tensor] = {"embed.W_E": w["W_E"], "pos_embed.W_pos": w["W_pos"]}
    for l in range(cfg.n_layers):
        p = f"blocks.{l}.attn."
        for name in ("W_Q", "W_K", "W_V", "W_O"):
            sd[p + name] = w[name][l].contiguous()
        for name in ("b_Q", "b_K", "b_V"):
            sd[p + name] = torch.zeros(H, Dh, dtype=w["W_Q"].dtype)
        sd[p + "b_O"] = torch.zeros(D, dtype=w["W_O"].dtype)
    sd["unembed.W_U"] = w["W_U"]
    sd["unembed.b_U"] = torch.zeros(cfg.d_vocab, dtype=w["W_U"].dtype)
    tl_cfg = {
        "n_layers": cfg.n_layers,
        "d_model": D,
        "n_ctx": cfg.n_ctx,
        "d_head": Dh,
        "n_heads": H,
        "d_vocab": cfg.d_vocab,
        "d_vocab_out": cfg.d_vocab,
        "attn_only": True,
        "act_fn": None,
        "normalization_type": "RMSPre" if cfg.normalization == "rms" else None,
        "eps": RMS_EPS,
        "seed": cfg.seed,
        "positional_embedding_type": "shortformer"
        if cfg.positional == "shortformer"
        else "standard",
    }
    return sd, tl_cfg


def to_hooked_transformer(model: AttnOnlyTransformer) -> Any:
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


def save_transformer_lens(model: AttnOnlyTransformer, out_dir: str | Path) -> Path:
    """Write a TL-format folder: config.json (TL config) + model.safetensors (TL keys)."""
    from qkov.io import atomic_save_safetensors, atomic_write_text

    out = Path(out_dir)
    sd, tl_cfg = to_transformer_lens(model)
    atomic_save_safetensors(out / "model.safetensors", sd, metadata={"format": "transformer_lens"})
    atomic_write_text(out / "config.json", json.dumps(tl_cfg, indent=2, sort_keys=True) + "\n")
    return out
