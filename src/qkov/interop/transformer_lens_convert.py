"""TL state dict -> qkov weights, exactly: qkov's general model computes what TL computes.

A TL HookedTransformer (pre-norm; LN, LNPre, RMS, RMSPre or no norm; MLPs or attention
only; biases) is qkov's Transformer with the same tensors under the paper's names
(transformer_lens_format.TL_KEYS). Three things are converted, all exactly:

  - TL's attention scale, when it is not sqrt(d_head), goes into W_Q and b_Q: qkov divides
    the scores by sqrt(d_head), so W_Q is multiplied by sqrt(d_head) / scale;
  - a gated MLP's b_in, which TL adds after the gate (act(x W_gate) * (x W_in) + b_in),
    goes into b_out as b_in W_out (qkov adds b_in inside: act(x W_gate) * (x W_in + b_in));
  - biases that are all zero are dropped (bias=False): an attention-only TL model without
    biases or norm weights imports as qkov's attention-only model, at its own width, the
    form every analysis reads.

Rotary positions (GPT-NeoX's layout, with Llama 3.1's rescaled frequencies too), gated and
parallel MLPs and grouped-query attention import as qkov's options of the same names. What
qkov's model does not compute (alibi or GPT-J's interleaved rotary positions, YaRN,
shortformer with a learned norm, post-norm blocks, ...) is refused with one line
(transformer_lens_format.check_config).

fold_ln: before qkov had norms, LayerNorm was folded into the weights with its scale
dropped (an approximation). LayerNorm now imports exactly as normalization="layernorm",
so fold_ln=True is accepted and changes nothing (the analyses fold norms themselves:
qkov.fold.fold_layernorm).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from qkov.config import ModelConfig
from qkov.interop.transformer_lens_format import (
    BIASES,
    cfg_dict,
    check_config,
    read_state_dict,
)
from qkov.model import Transformer


@dataclass
class Converted:
    """A TL checkpoint in qkov form: build the model with `.model()`.

    exact: False only when nonzero biases were dropped (drop_biases=True)."""

    config: ModelConfig
    weights: dict[str, Tensor]
    exact: bool
    notes: list[str] = field(default_factory=list)

    def model(self) -> Transformer:
        return Transformer.from_weights(self.config, self.weights)

    def __repr__(self) -> str:
        c = self.config
        mlp = f"d_mlp={c.d_mlp}" if c.d_mlp else "attention-only"
        exact = "exact" if self.exact else "not exact (nonzero biases dropped)"
        n = len(self.notes)
        notes = f"; {n} note{'s' * (n != 1)} (.notes)" if n else ""
        return (
            f"Converted(n_layers={c.n_layers}, n_heads={c.n_heads}, d_model={c.d_model}, "
            f"d_vocab={c.d_vocab}, {mlp}, {c.positional}, norm {c.normalization};\n"
            f"  {len(self.weights)} weights, {exact}{notes})"
        )


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
    """TL state dict + TL config -> qkov config and weights, exact (see the module doc).

    fold_ln: accepted for old callers, no longer needed (LayerNorm imports exactly).
    drop_biases: import without biases (bias=False), approximate unless they are all zero;
    gives the attention-only form the analyses read when the model has no MLP or norm."""
    del fold_ln  # see the module docstring
    cfg, norm, scale = check_config(cfg_dict(tl_cfg), source)
    w = read_state_dict(state_dict, cfg, norm, source)
    notes: list[str] = []
    ratio = math.sqrt(cfg.d_head) / scale
    if ratio != 1.0:  # [L, H, d_model, d_head] and [L, H, d_head]
        w = {**w, "W_Q": w["W_Q"] * ratio, "b_Q": w["b_Q"] * ratio}
        notes.append(f"attention scale {scale:g} folded into W_Q and b_Q")
    if norm == "LNPre":
        notes.append("LNPre imported as layernorm with w = 1, b = 0")
    if cfg.gated_mlp and bool(w["b_in"].abs().max() > 0):
        # TL adds b_in after the gate, act(x W_gate) * (x W_in) + b_in, where qkov has
        # act(x W_gate) * (x W_in + b_in): a constant b_in W_out each MLP writes, so b_out's
        b_out = w["b_out"] + torch.einsum("lm,lmd->ld", w["b_in"], w["W_out"])
        w = {**w, "b_in": torch.zeros_like(w["b_in"]), "b_out": b_out}
        notes.append("gated MLP: TL's b_in (added after the gate) folded into b_out as b_in W_out")
    has_bias = any(bool(w[b].abs().max() > 0) for b in BIASES if b in w and w[b].numel())
    if has_bias and drop_biases:
        notes.append("nonzero biases dropped: forward passes are approximate")
    if not has_bias or drop_biases:
        cfg = dataclasses.replace(cfg, bias=False)
        w = {k: v for k, v in w.items() if k not in BIASES}
    dtype = _weights_dtype(state_dict)
    weights = {k: v.to(dtype).contiguous() for k, v in w.items()}
    return Converted(cfg, weights, exact=not (has_bias and drop_biases), notes=notes)
