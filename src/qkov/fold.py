"""Fold the learned norms into the weights: an equivalent model whose only norm is a weightless
divide by the per-position RMS (normalization="rms"), so every circuit is a weight product
again, up to one positive number per position (the paper's treatment of LayerNorm).

A pre-norm reads `norm(x) W + b` with norm(x) = c(x) / s(x) * w + b_ln, where c centres
(layernorm) or is the identity (rmsnorm) and s is the RMS of c(x). Then

    norm(x) W + b = (c(x) / s(x)) (diag(w) W) + (b_ln W + b)

so each reading matrix (W_Q, W_K, W_V from ln1; W_in from ln2; W_U from ln_final) takes the
weight on its rows and the norm's bias into its own bias. For layernorm c(x) has zero mean,
so each reading matrix can also be centred over d_model (its mean row removed) without
changing a number. Every writing matrix (W_E, W_pos, W_O, b_O, W_out, b_out) is then centred
over d_model too: all readers centre anyway, so this changes nothing, and afterwards the
residual stream itself has zero mean at every position. With a centred stream c is the
identity, so the folded layernorm model is exactly normalization="rms" (TransformerLens
needs an "LNPre" for the same step because it leaves the choice to centre writes optional).
rmsnorm folds only its weight (no centring: its readers do not centre).

Grouped-query attention (n_kv_heads < n_heads) is unfolded too: the folded model gives each
query head its own copy of the W_K, W_V (and b_K, b_V) it reads, so every analysis sees the
paper's per-head matrices. A gated MLP's W_gate reads the same norm as W_in and folds alike.

`center_unembed` (TransformerLens's center_unembed) also removes W_U's and b_U's mean over
the vocabulary: that shifts every position's logits by one constant, which softmax ignores,
so log-probabilities are unchanged but the logits themselves are not. The analyses fold with
center_unembed=False so that their terms sum to the model's own logits.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from qkov.config import ModelConfig
from qkov.errors import QkovError
from qkov.model import Transformer, per_query_head
from qkov.weights import MODEL_WIDE, weight_shapes

# The norm each folded model keeps: its learned weights and biases are in the matrices.
FOLDED_NORMALIZATION = {"none": "none", "rms": "rms", "layernorm": "rms", "rmsnorm": "rms"}


def is_folded(model: Transformer) -> bool:
    """True when the model has no learned norm weights (normalization "none" or "rms") and
    one W_K, W_V per head, so its circuits are weight products as they stand."""
    return is_folded_config(model.cfg)


def is_folded_config(cfg: ModelConfig) -> bool:
    """`is_folded` of any model of this config."""
    return cfg.normalization in ("none", "rms") and cfg.n_kv_heads == cfg.n_heads


# What a shared fold writes anew (`fold_bytes`): an rmsnorm fold scales the readers (their
# biases stay: the norm has none), and with grouped-query attention every fold gives each
# query head its own W_K, W_V (and b_K, b_V)
_READERS = ("W_Q", "W_K", "W_V", "W_in", "W_gate", "W_U")
_PER_QUERY_HEAD = ("W_K", "b_K", "W_V", "b_V")


def fold_bytes(cfg: ModelConfig, share: bool = True, element_size: int = 4) -> int:
    """Bytes of the weights `fold_layernorm(model, center_unembed=False, share=share)` writes
    for a model of `cfg` in a dtype of `element_size` bytes (what the analyses' own fold
    adds to the loaded model's memory): every folded weight after a layernorm fold (it
    centres the writers) or without `share`; with it, an rmsnorm fold's reading matrices,
    and with grouped-query attention the per-query-head W_K, W_V, b_K, b_V (a model without
    learned norms or grouped queries is its own fold: 0). Tested against the folds."""
    if is_folded_config(cfg):
        return 0
    shapes = weight_shapes(
        dataclasses.replace(
            cfg,
            normalization=FOLDED_NORMALIZATION[cfg.normalization],
            bias=cfg.bias or cfg.normalization == "layernorm",
            n_kv_heads=cfg.n_heads,
        )
    )
    if share and cfg.normalization != "layernorm":
        grouped = _PER_QUERY_HEAD if cfg.n_kv_heads < cfg.n_heads else ()
        written = (_READERS if cfg.normalization == "rmsnorm" else ()) + grouped
        shapes = {k: v for k, v in shapes.items() if k in written}
    return element_size * sum(math.prod(shape) for shape in shapes.values())


def _check_memory(model: Transformer, share: bool) -> None:
    """Refuse, with one QkovError line, a fold whose new weights (`fold_bytes`) would not
    fit in the memory available (on the CPU; a GPU's is not checked here)."""
    from qkov.resources import available_memory, size_str

    if model.device.type != "cpu":
        return
    need = fold_bytes(model.cfg, share, model.W_E.element_size())
    have = available_memory()
    if have is not None and need > have:
        mend = "free memory (delete the models no longer used)"
        if not share:
            mend += ", or fold with share=True (it reuses the tensors the fold leaves alone)"
        raise QkovError(
            f"folding the norms of this {model.cfg.n_params:,}-parameter model writes "
            f"{size_str(need)} of new weights, and {size_str(have)} is available: {mend}"
        )


def _fold_reader(
    W: Tensor, b: Tensor | None, w_ln: Tensor, b_ln: Tensor | None, centre: bool
) -> tuple[Tensor, Tensor | None]:
    """One reading matrix W [..., d_model, d_out] (bias b [..., d_out]) behind a norm with
    weight w_ln [..., d_model] and bias b_ln: (diag(w) W, b_ln W + b), W centred over d_model
    when the norm centres. Leading axes (layers, heads) broadcast."""
    if b_ln is not None:
        shift = (b_ln[..., None, :] @ W).squeeze(-2)  # [..., d_out]
        b = shift if b is None else b + shift
    W = W * w_ln[..., :, None]
    if centre:
        W = W - W.mean(-2, keepdim=True)
    return W, b


@torch.no_grad()
def fold_layernorm(
    model: Transformer,
    *,
    center_writing: bool = True,
    center_unembed: bool = True,
    share: bool = False,
) -> Transformer:
    """An equivalent model with the norms' weights (and layernorm's biases) folded into the
    reading matrices and, for layernorm, the writing matrices centred (see the module
    docstring). normalization: layernorm, rmsnorm and rms -> "rms"; none -> "none".

    Same logits as `model` to float rounding (a layernorm fold is done in float64; an
    rmsnorm fold, one multiply per weight, in the model's dtype: the same bits), except that
    center_unembed=True shifts each position's logits by a constant (log-softmax unchanged).
    A layernorm model gains biases (bias=True) where ln_b had none to go. With nothing to
    fold (normalization "none" or "rms") and center_unembed=False the model itself is
    returned. center_writing=False is allowed only without layernorm (the folded model would
    need a centring norm that the folded config cannot express).

    share=True: the tensors the fold leaves as they are (an rmsnorm fold's W_E, W_O, W_out
    and biases, a third of a Llama-style model; a layernorm fold changes them all) are the
    original's own, not copies: an in-place write to one is a write to the other, and a
    cast or move of the folded model (`.double()`, `.to("cuda")`) would cast or move them in
    the original too. The analyses' own fold (`qkov.circuits.folded`) shares; by default
    the folded model is a model of its own."""
    if is_folded(model) and not center_unembed:
        return model
    # Every analysis asks for the fold (per head, for some): a 124M-parameter model is folded
    # once, and again only when a weight changes (each in-place write bumps a version).
    key = (
        center_writing,
        center_unembed,
        share,
        [(p.data_ptr(), p._version) for p in model.parameters()],
    )
    cached = model.__dict__.get("_qkov_fold")
    if cached is not None and cached[0] == key:
        return cached[1]
    _check_memory(model, share)
    folded = _fold(model, center_writing, center_unembed, share)
    model.__dict__["_qkov_fold"] = (key, folded)  # not a submodule: no parameters, no state
    return folded


def _fold(
    model: Transformer, center_writing: bool, center_unembed: bool, share: bool
) -> Transformer:
    cfg = model.cfg
    kind = cfg.normalization
    if kind == "layernorm" and not center_writing:
        raise ValueError(
            "fold_layernorm(center_writing=False) on a layernorm model has no equivalent "
            "normalization='rms' model: keep center_writing=True"
        )
    if kind == "layernorm" and cfg.gated_mlp:
        raise QkovError(
            "fold_layernorm: a gated MLP behind a layernorm would need a gate bias, which "
            "the model has no place for: use normalization='rmsnorm' (as Llama does)"
        )
    layernorm = kind == "layernorm"
    folded_cfg = dataclasses.replace(
        cfg,
        normalization=FOLDED_NORMALIZATION[kind],
        bias=cfg.bias or layernorm,
        n_kv_heads=cfg.n_heads,
    )
    folded = Transformer.empty(folded_cfg, device=model.device, dtype=model.W_E.dtype)
    src, dst = model.weights(), folded.weights()
    # One layer at a time, in float64, written straight into the folded model: a 1B model's
    # weights whole in float64 are 9 GB (TinyLlama's fold took 24 GB that way). An rmsnorm
    # fold is one multiply per weight (diag(w) W), which IEEE rounds correctly in any dtype:
    # the model's own dtype gives the float64 fold's bits, in a third of the time at 1B.
    wide = torch.float64 if layernorm or center_unembed else model.W_E.dtype
    written: set[str] = set()
    # share: a tensor the fold leaves as it is (an rmsnorm fold's W_E, W_O, W_out, ...: a
    # third of a 1B model) is not copied; the folded model holds the original's (`_share`).
    same_dtype = model.W_E.dtype == wide
    kept = {k for k in src if share and same_dtype and k in dst and k not in MODEL_WIDE}
    for l in range(cfg.n_layers):
        original = {k: v[l] for k, v in src.items() if k not in MODEL_WIDE}
        w = {k: v.to(wide) for k, v in original.items()}
        for name in ("W_K", "W_V", "b_K", "b_V"):  # grouped-query attention: a copy per head
            if name in w:
                w[name] = per_query_head(w[name], cfg.n_heads)
        _fold_layer(w, kind, center_writing, cfg.d_mlp > 0, cfg.gated_mlp)
        changed = {k for k in kept if w.get(k) is not original[k]}
        for name in changed if l else ():  # its earlier layers were left as they are
            dst[name][:l].copy_(src[name][:l])
        kept -= changed
        for name, value in w.items():
            if name not in kept:
                dst[name][l].copy_(value)
            written.add(name)
    for name in kept & written:  # unchanged in every layer
        _share(folded, model, name)
    w = {k: v.to(wide) for k, v in src.items() if k in MODEL_WIDE}
    original = {k: src[k] for k in w}
    if kind in ("layernorm", "rmsnorm"):
        w["W_U"], w["b_U"] = _fold_reader(
            w["W_U"], w.get("b_U"), w.pop("ln_final_w"), w.pop("ln_final_b", None), layernorm
        )
    if layernorm and center_writing:
        for name in ("W_E", "W_pos"):
            if name in w:
                w[name] = w[name] - w[name].mean(-1, keepdim=True)
    if center_unembed:
        w["W_U"] = w["W_U"] - w["W_U"].mean(-1, keepdim=True)
        if w.get("b_U") is not None:
            w["b_U"] = w["b_U"] - w["b_U"].mean()
    for name, value in w.items():
        if value is None:
            continue
        if share and value is original.get(name):
            _share(folded, model, name)
        else:
            dst[name].copy_(value)
        written.add(name)
    # Biases the original lacked (a layernorm model with bias=False) stay zero.
    for name, value in dst.items():
        if name not in written:
            value.zero_()
    folded.tokenizer, folded.token_counts = model.tokenizer, model.token_counts
    folded.train(model.training)
    return folded


def _share(folded: Transformer, model: Transformer, name: str) -> None:
    """Give `folded` the original's tensor `name` itself (same shape, dtype, values)."""
    folded._parameters[name] = model._parameters[name]


def _fold_layer(
    w: dict[str, Tensor], kind: str, center_writing: bool, mlp: bool, gated: bool
) -> None:
    """Fold one layer's weights in place: w holds them without the layer axis (W_Q [n_heads,
    d_model, d_head], W_in [d_model, d_mlp], ln1_w [d_model], ...); its norm weights are
    popped and the readers' biases added where the norm had one."""
    layernorm = kind == "layernorm"
    if kind in ("layernorm", "rmsnorm"):
        w1, b1 = w.pop("ln1_w"), w.pop("ln1_b", None)
        heads_w1 = w1[None]  # [1, d_model]: the same norm for every head
        heads_b1 = b1[None] if b1 is not None else None
        for name in ("Q", "K", "V"):
            w[f"W_{name}"], w[f"b_{name}"] = _fold_reader(
                w[f"W_{name}"], w.get(f"b_{name}"), heads_w1, heads_b1, layernorm
            )
        if mlp:
            w2, b2 = w.pop("ln2_w"), w.pop("ln2_b", None)
            w["W_in"], w["b_in"] = _fold_reader(w["W_in"], w.get("b_in"), w2, b2, layernorm)
            if gated:
                w["W_gate"] = _fold_reader(w["W_gate"], None, w2, None, layernorm)[0]
    if layernorm and center_writing:
        for name in ("W_O", "b_O", "W_out", "b_out"):
            if w.get(name) is not None:
                w[name] = w[name] - w[name].mean(-1, keepdim=True)
    for name in [k for k, v in w.items() if v is None]:
        del w[name]
