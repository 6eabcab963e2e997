"""TL attention-only state dict -> qkov weights: the attention scale, LayerNorm and biases folded.

Biases are folded *exactly* into qkov's bias-free model by adding one residual dimension,
the bias direction, that holds the constant 1 at every position (homogeneous coordinates):
W_E gets a column of ones; the bias direction's row of W_Q/W_K/W_V is b_Q/b_K/b_V; its row
of W_U is b_U; nothing writes to it. Each b_O is moved into the embedding (every position's
residual starts with the sum of all b_O), and the layers that should not yet see a later
layer's b_O subtract its read-out through their bias row. The result has d_model + 1 and
the same logits and activations (q, k, v, patterns, z) as the TL model, so every qkov
analysis, including the path expansion, stays exact. In the path expansion the biases are
the constant terms carried by the bias direction: the direct path holds the logit offset
(Σ b_O) W_U + b_U, each OV circuit a constant row b_V W_O W_U, each QK circuit a source
preference b_Q W_K^T (b_K only adds a per-destination constant the softmax ignores).
A checkpoint whose biases are all zero is imported at its own width.

LayerNorm (normalization_type "LN" or "LNPre") is folded the standard way, as TL's
fold_ln + center_writing_weights does: ln weights into the reading matrices, ln biases
into b_Q/b_K/b_V/b_U, writing matrices (W_E, W_pos if standard, W_O, b_O) centred so the
mean subtraction is a no-op. What cannot be folded is the division by the residual norm, a
nonlinearity qkov's model does not have, so the imported model is TL's with every LN scale
set to 1. Then forward-based results (logits, loss, attention patterns, path expansion
against TL's logits, ablations, head scores) are approximate; weight-based circuit results
(QK/OV circuits and their eigenvalues, copying scores, composition scores) equal those TL
computes on its fold_ln model, which also ignores the scale. Import with LN is opt-in
(`fold_ln=True`). Shortformer + LN is refused, as TL refuses it: W_pos is shared by
all layers but would need each layer's own ln weight folded in.

TL's weightless RMS norm (normalization_type "RMSPre") is qkov's normalization="rms":
such models import and export exactly, both ways, when their biases are zero (a bias
direction would change each position's RMS, so biases are then refused).

Each step below takes and returns the dict of `read_state_dict` (float64, per-layer
tensors on a leading [L] axis); L = n_layers, H = n_heads, D = d_model, Dh = d_head.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from qkov.config import ModelConfig
from qkov.errors import QkovError
from qkov.interop.transformer_lens_format import cfg_dict, check_config, read_state_dict
from qkov.model import AttnOnlyTransformer

_QKOV_WEIGHTS = ("W_E", "W_pos", "W_Q", "W_K", "W_V", "W_O", "W_U")


@dataclass
class Converted:
    """A TL checkpoint in qkov form: build the model with `.model()`.

    exact: False when LayerNorm was folded (the scale is dropped: see the module docstring).
    bias_direction: index of the constant-1 residual dimension holding the biases, or None.
    """

    config: ModelConfig
    weights: dict[str, Tensor]
    exact: bool
    bias_direction: int | None
    notes: list[str] = field(default_factory=list)

    def model(self) -> AttnOnlyTransformer:
        return AttnOnlyTransformer.from_weights(self.config, self.weights)


def _read_per_head(x: Tensor, W: Tensor) -> Tensor:
    """x W for every head of every layer: x [L, D], W [L, H, D, Dh] -> [L, H, Dh]."""
    L, H, D, Dh = W.shape
    # All heads of a layer side by side, one product per layer: the summation order of
    # torch.einsum("ld,lhde->lhe"), which imports used before, so weights stay bit-identical.
    W_heads = W.transpose(1, 2).reshape(L, D, H * Dh)  # [L, D, H * Dh]
    return (x[:, None, :] @ W_heads).view(L, H, Dh)  # [L, 1, D] @ [L, D, H * Dh]


def _fold_attn_scale(w: dict[str, Any], ratio: float) -> dict[str, Any]:
    """qkov divides scores by sqrt(d_head): TL's other scale goes into W_Q and b_Q as ratio."""
    return {**w, "W_Q": w["W_Q"] * ratio, "b_Q": w["b_Q"] * ratio}


def _fold_layernorm(w: dict[str, Any]) -> dict[str, Any]:
    """LN(x) = ln_w * n(x) + ln_b feeds q/k/v: ln_w into W_Q/W_K/W_V, ln_b into their biases."""
    ln_w, ln_b = w["ln_w"][:, None, :, None], w["ln_b"]  # [L, 1, D, 1], [L, D]
    W_Q, W_K, W_V = w["W_Q"], w["W_K"], w["W_V"]  # [L, H, D, Dh]
    return {
        **w,
        "b_Q": w["b_Q"] + _read_per_head(ln_b, W_Q),  # [L, H, Dh]
        "b_K": w["b_K"] + _read_per_head(ln_b, W_K),
        "b_V": w["b_V"] + _read_per_head(ln_b, W_V),
        "W_Q": W_Q * ln_w,
        "W_K": W_K * ln_w,
        "W_V": W_V * ln_w,
        # ln_final feeds the unembedding the same way.
        "b_U": w["b_U"] + w["lnf_b"] @ w["W_U"],  # [D] @ [D, d_vocab]
        "W_U": w["lnf_w"][:, None] * w["W_U"],  # [D, 1] * [D, d_vocab]
    }


def _center_writing_weights(w: dict[str, Any], standard_pos: bool) -> dict[str, Any]:
    """Centre what writes to the residual, so LN's mean subtraction becomes a no-op.

    Only the (dropped) division by the norm remains. A shortformer W_pos writes to no
    residual: it only feeds q and k."""
    centred = {
        "W_E": w["W_E"] - w["W_E"].mean(-1, keepdim=True),  # [d_vocab, D]
        "W_O": w["W_O"] - w["W_O"].mean(-1, keepdim=True),  # [L, H, Dh, D]
        "b_O": w["b_O"] - w["b_O"].mean(-1, keepdim=True),  # [L, D]
    }
    if standard_pos:
        centred["W_pos"] = w["W_pos"] - w["W_pos"].mean(-1, keepdim=True)  # [n_ctx, D]
    return {**w, **centred}


def _has_bias(w: dict[str, Any]) -> bool:
    """Whether any of b_Q, b_K, b_V, b_O, b_U is nonzero."""
    biases = (w["b_Q"], w["b_K"], w["b_V"], w["b_O"], w["b_U"])
    return any(bool(b.abs().max() > 0) for b in biases if b.numel())


def _fold_biases(w: dict[str, Any], cfg: ModelConfig) -> tuple[dict[str, Any], ModelConfig]:
    """Fold every bias into a new residual dimension D, constant 1 (the bias direction)."""
    L, D = cfg.n_layers, cfg.d_model
    f64 = torch.float64
    # later[l] = sum of b_O over layers >= l: what the residual holds too early at layer l.
    later = torch.flip(torch.cumsum(torch.flip(w["b_O"], [0]), 0), [0])  # [L, D]
    total = later[0] if L else torch.zeros(D, dtype=f64)  # Σ b_O, moved into W_E

    def with_bias_row(W: Tensor, b: Tensor) -> Tensor:
        """W [L, H, D, Dh] -> [L, H, D + 1, Dh], row D = b [L, H, Dh] less later's read-out."""
        row = b - _read_per_head(later, W)  # [L, H, Dh]
        return torch.cat([W, row[:, :, None, :]], dim=2)

    W_O = w["W_O"]
    folded = {
        "W_E": torch.cat([w["W_E"] + total, torch.ones(cfg.d_vocab, 1, dtype=f64)], dim=1),
        "W_pos": torch.cat([w["W_pos"], torch.zeros(cfg.n_ctx, 1, dtype=f64)], dim=1),
        "W_Q": with_bias_row(w["W_Q"], w["b_Q"]),
        "W_K": with_bias_row(w["W_K"], w["b_K"]),
        "W_V": with_bias_row(w["W_V"], w["b_V"]),
        # No head writes to the bias direction: W_O [L, H, Dh, D + 1] gets a zero column.
        "W_O": torch.cat([W_O, torch.zeros(*W_O.shape[:3], 1, dtype=f64)], dim=3),
        "W_U": torch.cat([w["W_U"], w["b_U"][None]], dim=0),  # [D + 1, d_vocab]
    }
    return {**w, **folded}, ModelConfig(**{**cfg.to_dict(), "d_model": D + 1})


def _weights_dtype(state_dict: Mapping[str, Tensor]) -> torch.dtype:
    """The imported weights' dtype: W_E's if float32 or float64, else float32."""
    W_E = state_dict.get("embed.W_E")
    dtype = W_E.dtype if isinstance(W_E, Tensor) else torch.float32
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def convert_state_dict(
    state_dict: Mapping[str, Tensor],
    tl_cfg: Any,
    *,
    fold_ln: bool = False,
    drop_biases: bool = False,
    source: str = "TL state dict",
) -> Converted:
    """TL attention-only state dict + TL config -> qkov config and weights (see module doc).

    drop_biases: ignore the biases instead of folding them (approximate unless they are 0);
    keeps d_model, so weight analyses compare 1:1 with TL's, which also ignore biases."""
    cfg, norm, scale = check_config(cfg_dict(tl_cfg), source)
    rms = norm == "RMSPre"  # qkov's own normalization="rms": nothing to fold
    if rms:
        norm = None
    if norm is not None and not fold_ln:
        raise QkovError(
            f"{source} uses LayerNorm ({norm}), which qkov's model does not have: pass "
            "fold_ln=True to fold it (exact for circuit weights, approximate for forward passes)"
        )
    w = read_state_dict(state_dict, cfg, norm, source)
    notes: list[str] = []
    dtype = _weights_dtype(state_dict)

    ratio = math.sqrt(cfg.d_head) / scale
    if ratio != 1.0:
        w = _fold_attn_scale(w, ratio)
        notes.append(f"attention scale {scale:g} folded into W_Q and b_Q")
    if norm is not None:
        if norm == "LN":
            w = _fold_layernorm(w)
        w = _center_writing_weights(w, standard_pos=cfg.positional == "standard")
        notes.append(
            f"LayerNorm ({norm}) folded; its scale is dropped, so forward passes are approximate"
        )

    has_bias = _has_bias(w)
    if rms and has_bias and not drop_biases:
        raise QkovError(
            f"{source} has RMSPre normalisation and nonzero biases, which cannot be folded "
            "exactly (the bias direction would change each position's RMS): pass "
            "drop_biases=True to ignore them (approximate)"
        )
    bias_dir = None
    if has_bias and drop_biases:
        notes.append("nonzero biases dropped: forward passes are approximate")
    elif has_bias:
        bias_dir = cfg.d_model
        w, cfg = _fold_biases(w, cfg)
        notes.append(f"biases folded exactly into the bias direction (residual dim {bias_dir})")
    weights = {k: w[k].to(dtype).contiguous() for k in _QKOV_WEIGHTS}
    exact = norm is None and not (has_bias and drop_biases)
    return Converted(cfg, weights, exact=exact, bias_direction=bias_dir, notes=notes)
