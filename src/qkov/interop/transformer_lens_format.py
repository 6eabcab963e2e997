"""TransformerLens's checkpoint format: the lazy import, the config check, the state-dict reader.

TL stores the paper's matrices in qkov's layout, one tensor per layer:

    embed.W_E [d_vocab, d_model]   pos_embed.W_pos [n_ctx, d_model]   unembed.W_U [d_model, d_vocab]
    blocks.{l}.attn.W_Q, W_K, W_V [n_heads, d_model, d_head]   W_O [n_heads, d_head, d_model]
    blocks.{l}.attn.b_Q, b_K, b_V [n_heads, d_head]   b_O [d_model]   unembed.b_U [d_vocab]
    blocks.{l}.ln1.w, .b and ln_final.w, .b [d_model]  (normalization_type "LN")

`read_state_dict` returns these as float64 tensors under the paper's names, each per-layer
tensor stacked on a leading [n_layers] axis (W_Q [n_layers, n_heads, d_model, d_head]).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from qkov.config import ModelConfig
from qkov.errors import QkovError
from qkov.model import RMS_EPS

INSTALL_HINT = "pip install 'qkov[interop]' (transformer-lens==3.9.0)"
ATTN_KEYS = ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O")
BUFFERS = ("mask", "IGNORE")  # TL attention buffers, not weights
_LAYER_KEY = re.compile(r"blocks\.(\d+)\.(attn|ln1)\.(\w+)")
_GLOBAL_KEYS = (
    "embed.W_E",
    "pos_embed.W_pos",
    "unembed.W_U",
    "unembed.b_U",
    "ln_final.w",
    "ln_final.b",
)


def require_tl():
    """Import transformer_lens lazily, or explain how to install it."""
    try:
        import transformer_lens
    except ImportError:
        raise QkovError(f"TransformerLens is not installed: {INSTALL_HINT}") from None
    return transformer_lens


# ---------------------------------------------------------------------------- config
def cfg_dict(tl_cfg: Any) -> dict[str, Any]:
    """A TL config (dict or HookedTransformerConfig) as a plain dict."""
    if isinstance(tl_cfg, Mapping):
        return dict(tl_cfg)
    if hasattr(tl_cfg, "to_dict"):
        return dict(tl_cfg.to_dict())
    raise QkovError(
        f"TL config must be a dict or a HookedTransformerConfig, got {type(tl_cfg).__name__}"
    )


def check_config(c: dict[str, Any], source: str) -> tuple[ModelConfig, str | None, float]:
    """Validate a TL config; returns (qkov config, normalization, attention scale)."""
    need = ("n_layers", "d_model", "n_ctx", "d_head", "n_heads", "d_vocab")
    missing = [k for k in need if c.get(k) is None]
    if missing:
        raise QkovError(f"{source}: TL config lacks {missing}: pass the HookedTransformerConfig")

    def bad(what: str) -> QkovError:
        return QkovError(f"{source}: {what}; qkov imports causal attention-only models only")

    if not c.get("attn_only", False):
        raise bad("attn_only is False (the model has MLPs)")
    pos = c.get("positional_embedding_type", "standard")
    if pos not in ("standard", "shortformer"):
        raise bad(f"positional_embedding_type={pos!r} (need 'standard' or 'shortformer')")
    norm = c.get("normalization_type")
    if norm not in (None, "LN", "LNPre", "RMSPre"):
        raise bad(f"normalization_type={norm!r} (need None, 'LN', 'LNPre' or 'RMSPre')")
    if norm == "RMSPre" and abs(float(c.get("eps", RMS_EPS)) - RMS_EPS) > 1e-12:
        raise bad(f"RMSPre with eps={c['eps']} (qkov's rms norm uses eps={RMS_EPS})")
    if pos == "shortformer" and norm == "LN":
        raise QkovError(
            f"{source}: shortformer + LayerNorm cannot be folded (W_pos is shared by all "
            "layers but each layer's ln1.w would have to be folded into it), as in TL"
        )
    checks = {
        "attention_dir": ("causal", "causal"),
        "n_key_value_heads": (None, None),
        "use_local_attn": (False, False),
        "use_qk_norm": (False, False),
        "use_normalization_before_and_after": (False, False),
        "final_rms": (False, False),
    }
    for key, (default, want) in checks.items():
        if c.get(key, default) != want:
            raise bad(f"{key}={c[key]!r} is not supported (need {want!r})")
    for cap in ("attn_scores_soft_cap", "output_logits_soft_cap"):
        if (c.get(cap) or -1.0) > 0:
            raise bad(f"{cap}={c[cap]} is not supported")
    d_vocab_out = c.get("d_vocab_out", -1)
    if d_vocab_out not in (-1, None, c["d_vocab"]):
        raise bad(f"d_vocab_out={d_vocab_out} differs from d_vocab={c['d_vocab']}")
    d_head = int(c["d_head"])
    if c.get("use_attn_scale", True):
        scale = float(c.get("attn_scale") or -1.0)
        scale = math.sqrt(d_head) if scale <= 0 else scale
    else:
        scale = 1.0
    seed = c.get("seed")
    cfg = ModelConfig(
        n_layers=int(c["n_layers"]),
        n_heads=int(c["n_heads"]),
        d_model=int(c["d_model"]),
        d_head=d_head,
        n_ctx=int(c["n_ctx"]),
        d_vocab=int(c["d_vocab"]),
        positional=pos,
        seed=seed if isinstance(seed, int) and seed >= 0 else 0,
        normalization="rms" if norm == "RMSPre" else "none",
    )
    return cfg, norm, scale


# ---------------------------------------------------------------------------- state dict
def _sort_keys(
    sd: Mapping[str, Tensor], n_layers: int, source: str
) -> tuple[dict[str, Tensor], list[dict[str, Tensor]]]:
    """Split TL keys into model-wide tensors and one dict per layer; unknown keys raise.

    Per-layer names: the attention's own (W_Q, ..., b_O), and ln_w, ln_b for ln1.w, ln1.b."""
    tensors: dict[str, Tensor] = {}
    layers: list[dict[str, Tensor]] = [{} for _ in range(n_layers)]
    unknown = []
    for key, value in sd.items():
        m = _LAYER_KEY.fullmatch(key)
        if m and int(m[1]) < n_layers:
            if m[3] in BUFFERS:
                continue
            if (m[2] == "attn" and m[3] in ATTN_KEYS) or (m[2] == "ln1" and m[3] in ("w", "b")):
                layers[int(m[1])][m[3] if m[2] == "attn" else f"ln_{m[3]}"] = value
                continue
        elif key in _GLOBAL_KEYS:
            tensors[key] = value
            continue
        unknown.append(key)
    if unknown:
        hint = (
            " (MLP weights: qkov models are attention-only)"
            if any(".mlp." in k for k in unknown)
            else ""
        )
        raise QkovError(f"{source} has tensors qkov cannot place: {unknown[:6]}{hint}")
    return tensors, layers


def _read_tensor(
    value: Tensor | None, shape: tuple[int, ...], name: str, zero_ok: bool, source: str
) -> Tensor:
    """One TL tensor as float64 on CPU, its shape checked; absent reads as zeros if zero_ok."""
    if value is None:
        if not zero_ok:
            raise QkovError(f"{source} is missing {name}: is it a TL attention-only model?")
        return torch.zeros(shape, dtype=torch.float64)
    if not isinstance(value, Tensor) or not torch.is_floating_point(value):
        raise QkovError(f"{source}: {name} is not a float tensor")
    if tuple(value.shape) != shape:
        raise QkovError(
            f"{source}: {name} has shape {list(value.shape)} but the TL config implies "
            f"{list(shape)}: does the config belong to these weights?"
        )
    return value.detach().to("cpu", torch.float64)


def read_state_dict(
    sd: Mapping[str, Tensor], cfg: ModelConfig, norm: str | None, source: str
) -> dict[str, Any]:
    """A TL state dict as float64 tensors under the paper's names (see the module docstring).

    Missing biases and ln biases read as zeros; lnf_w, lnf_b, ln_w, ln_b are present only
    when norm is "LN" (lnf_w, lnf_b as None otherwise)."""
    L, H, D, Dh = cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head
    tensors, layers = _sort_keys(sd, L, source)
    has_ln = any("ln_w" in d for d in layers) or "ln_final.w" in tensors
    if has_ln and norm != "LN":
        raise QkovError(
            f"{source} holds LayerNorm weights but the config says normalization_type={norm!r}"
        )

    def read(key: str, shape: tuple[int, ...], zero_ok: bool) -> Tensor:
        return _read_tensor(tensors.get(key), shape, key, zero_ok, source)

    def read_layers(name: str, tl_name: str, shape: tuple[int, ...], zero_ok: bool) -> list:
        return [
            _read_tensor(layers[l].get(name), shape, f"blocks.{l}.{tl_name}", zero_ok, source)
            for l in range(L)
        ]

    ln = norm == "LN"
    w: dict[str, Any] = {
        "W_E": read("embed.W_E", (cfg.d_vocab, D), False),
        "W_pos": read("pos_embed.W_pos", (cfg.n_ctx, D), False),
        "W_U": read("unembed.W_U", (D, cfg.d_vocab), False),
        "b_U": read("unembed.b_U", (cfg.d_vocab,), True),
        "lnf_w": read("ln_final.w", (D,), not ln) if ln else None,
        "lnf_b": read("ln_final.b", (D,), True) if ln else None,
    }
    shapes = {
        "W_Q": (H, D, Dh),
        "W_K": (H, D, Dh),
        "W_V": (H, D, Dh),
        "W_O": (H, Dh, D),
        "b_Q": (H, Dh),
        "b_K": (H, Dh),
        "b_V": (H, Dh),
        "b_O": (D,),
    }

    def stacked(per_layer: list[Tensor], shape: tuple[int, ...]) -> Tensor:  # [L, *shape]
        return torch.stack(per_layer) if L else torch.zeros(0, *shape, dtype=torch.float64)

    for name, shape in shapes.items():
        w[name] = stacked(read_layers(name, f"attn.{name}", shape, name[0] == "b"), shape)
    if ln:  # [L, d_model] each
        w["ln_w"] = stacked(read_layers("ln_w", "ln1.w", (D,), False), (D,))
        w["ln_b"] = stacked(read_layers("ln_b", "ln1.b", (D,), True), (D,))
    return w
