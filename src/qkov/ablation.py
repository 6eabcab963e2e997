"""Term importance (Elhage et al. 2021): the residual stream split by path order, and the loss
with each order, head or MLP ablated.

(The in-context-learning score is `qkov.icl`.)

Order-k terms. With the attention patterns A^{l,h} frozen at those of the clean forward pass,
an attention-only model is linear in its residual input x0 = W_E[tokens] (+ W_pos with
positional="standard"; shortformer keeps W_pos out of the stream). The residual stream then
splits exactly by path length ("order"):

    R_0 = x0,   and layer l adds  A^{l,h} R_k W_V^{l,h} W_O^{l,h}  to R_{k+1}  for every k, h,

so R_k is the sum of every chain of k heads (k = 0 direct path, 1 single heads, 2 virtual
heads / composed paths, ...) and logits = sum_k R_k W_U. Ablating all order-k terms is
logits - R_k W_U ("zero") or logits - R_k W_U + mean(R_k) W_U ("mean", mean over batch and
positions): exactly the forward pass run with frozen patterns and each head's value input fed
without its order-(k-1) part. Keys and queries keep their clean inputs (frozen patterns), as
in the paper's term-importance analysis. This works on the residual stream per order
((n_layers + 1) streams), not per path like `qkov.paths.path_expansion` ((1 + n_heads)
^ n_layers logit tensors), so it fits real text with a large vocabulary.

General models (MLPs, biases, layernorm/rmsnorm) are decomposed after folding their norms
(`qkov.circuits.folded`), with the norm scales and each MLP's output frozen as well: the
constants ("bias") and each MLP's output are starts of their own, each with its own order
streams (`start_order_residuals`), and an order counts the heads on a path whatever its
start. term_importance adds each MLP's knock-out and the removal of its paths.

Per-head ablation is the ordinary knock-out: one head's output is set to 0 ("zero") or to
its mean over batch and positions ("mean"), through a hook on `z.{l}` (W_O is linear and
per head, so this is exactly that on `head_out.{l}`); later heads see the change (patterns
not frozen).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from qkov.circuits import folded
from qkov.errors import QkovError
from qkov.icl import icl_from_logits as icl_from_logits  # re-exported: old import path
from qkov.icl import icl_score as icl_score  # re-exported: old import path
from qkov.loss import next_token_loss
from qkov.model import AttnOnlyTransformer, Transformer
from qkov.paths import FROZEN, frozen_scales, start_names
from qkov.reprs import capped, num, wrap

ABLATION_MODES = ("zero", "mean")


def _check_mode(mode: str) -> None:
    if mode not in ABLATION_MODES:
        raise QkovError(
            f"ablation mode {mode!r} is unknown: use one of {', '.join(ABLATION_MODES)}"
        )


def _need_two(tokens: Tensor) -> None:
    if tokens.shape[1] < 2:
        raise QkovError("loss needs sequences of at least 2 tokens (one to predict from)")


def _loss(logits: Tensor, tokens: Tensor) -> float:
    return float(next_token_loss(logits.detach(), tokens))


# ---------------------------------------------------------------------------- order decomposition
@torch.no_grad()
def start_order_residuals(
    model: Transformer, tokens: Tensor
) -> tuple[dict[str, Tensor], Tensor, Transformer]:
    """The residual stream split by start and path order, everything frozen at the clean
    pass (patterns, norm scales, MLP outputs; see `qkov.paths.path_expansion`).

    tokens [batch, pos] -> ({start: [n_layers + 1, batch, pos, d_model]}, clean logits,
    the folded model whose W_U (+ b_U) reads them). Starts are `paths.start_names`;
    each stream is as the unembedding reads it (over the final norm's frozen scale)."""
    tokens = model.check_tokens(tokens)
    clean = model(tokens)
    model = folded(model)
    cfg = model.cfg
    w = model.weights()
    _, cache = model.run_with_hooks(
        tokens, cache_names=lambda n: n in ("embed", "pos_embed") or n.split(".")[0] in FROZEN
    )
    scale = frozen_scales(model, cache)
    x0 = cache["embed"]
    S = {name: x0.new_zeros(cfg.n_layers + 1, *x0.shape) for name in start_names(cfg)}
    S["token"][0] = x0
    if cfg.positional == "standard":
        S["pos"][0] = cache["pos_embed"].expand_as(x0)
    for l in range(cfg.n_layers):
        A = cache[f"pattern.{l}"]  # [batch, head, dest, src]
        for name, R in S.items():
            # Orders 0..l exist before layer l; each moves up one order through this layer.
            v = (R[: l + 1] / scale[l])[:, :, None] @ w["W_V"][l]  # [l+1, batch, head, pos, d_head]
            if name == "bias":
                v[0] += w["b_V"][l][:, None]  # the heads' own constant, order 0 -> 1
            R[1 : l + 2] += ((A @ v) @ w["W_O"][l]).sum(2)  # [l+1, batch, pos, d_model]
        if cfg.bias:
            S["bias"][0] += w["b_O"][l]
        if cfg.d_mlp:
            b_out = w["b_out"][l] if cfg.bias else 0.0
            S[f"mlp{l}"][0] = cache[f"mlp_out.{l}"] - b_out
            if cfg.bias:
                S["bias"][0] += b_out
    return {name: R / scale[-1] for name, R in S.items()}, clean, model


@torch.no_grad()
def order_residuals(model: Transformer, tokens: Tensor) -> tuple[Tensor, Tensor]:
    """Residual stream split by path order (the number of heads on the path, whatever its
    start), patterns frozen at the clean pass.

    tokens [batch, pos] -> (R [n_layers + 1, batch, pos, d_model], clean logits
    [batch, pos, d_vocab]); R.sum(0) @ W_U (+ b_U) equals the clean logits to float
    tolerance, with W_U, b_U those of `folded(model)` (the model's own when it has no
    learned norm). With a norm the scales are frozen too, and R is as the unembedding reads
    it (each order divided by the final stream's RMS). With biases and MLPs the constants
    and each MLP's output are order-0 starts (`start_order_residuals` keeps them apart)."""
    S, logits, _ = start_order_residuals(model, tokens)
    return torch.stack(list(S.values())).sum(0), logits


def _unembed(model: Transformer) -> tuple[Tensor, Tensor | float]:
    """(W_U, b_U or 0.0) of the folded model: what reads order_residuals' R."""
    m = folded(model)
    return m.W_U.detach(), m.b_U.detach() if m.cfg.bias else 0.0


@torch.no_grad()
def order_logits(model: Transformer, tokens: Tensor) -> Tensor:
    """Logits per path order [n_layers + 1, batch, pos, d_vocab]; they sum to the logits
    (b_U, a constant, is counted in order 0)."""
    R, _ = order_residuals(model, tokens)
    W_U, b_U = _unembed(model)
    out = R @ W_U
    out[0] += b_U
    return out


# ---------------------------------------------------------------------------- term importance
@dataclass(frozen=True)
class OrderAblation:
    """Loss with all order-`order` terms ablated (0 direct, 1 single heads, 2 virtual heads)."""

    order: int
    n_terms: int  # C(n_layers, order) * n_heads ** order chains of heads
    loss: float
    delta: float  # loss increase over the clean loss

    def __repr__(self) -> str:
        return (
            f"OrderAblation(order {self.order}, {self.n_terms} terms: loss {num(self.loss)}, "
            f"delta {num(self.delta, '+.3f')})"
        )


@dataclass(frozen=True)
class HeadAblation:
    """Loss deltas of knocking out one head: output set to zero, or to its mean."""

    layer: int
    head: int
    zero_loss: float
    zero_delta: float
    mean_loss: float
    mean_delta: float

    @property
    def name(self) -> str:
        return f"L{self.layer}H{self.head}"

    def __repr__(self) -> str:
        return (
            f"HeadAblation({self.name}: zero loss {num(self.zero_loss)} "
            f"({num(self.zero_delta, '+.3f')}), mean loss {num(self.mean_loss)} "
            f"({num(self.mean_delta, '+.3f')}))"
        )


@dataclass(frozen=True)
class MlpAblation:
    """Loss deltas of one MLP layer: knocked out (its output set to zero, or to its mean;
    later layers see the change), and its paths removed with everything else frozen
    ("paths": its output and what later heads carry of it, in the term-importance mode)."""

    layer: int
    zero_loss: float
    zero_delta: float
    mean_loss: float
    mean_delta: float
    paths_loss: float
    paths_delta: float

    @property
    def name(self) -> str:
        return f"MLP{self.layer}"

    def __repr__(self) -> str:
        return (
            f"MlpAblation({self.name}: zero loss {num(self.zero_loss)} "
            f"({num(self.zero_delta, '+.3f')}), mean loss {num(self.mean_loss)} "
            f"({num(self.mean_delta, '+.3f')}), paths removed {num(self.paths_loss)} "
            f"({num(self.paths_delta, '+.3f')}))"
        )


@dataclass(frozen=True)
class TermImportance:
    """Term importance on given tokens: clean loss, per-order and per-head ablations."""

    clean_loss: float
    mode: str  # how the order terms were ablated: "zero" or "mean"
    orders: tuple[OrderAblation, ...]
    heads: tuple[HeadAblation, ...]
    n_tokens: int
    mlps: tuple[MlpAblation, ...] = ()
    # What order 0 removes: every path start through no head (the report names them too).
    order0_starts: tuple[str, ...] = ("direct path",)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __repr__(self) -> str:
        """Clean loss, each order's delta, and the heads and MLPs whose zero knock-out
        costs most (`_TOP` of each)."""
        kinds = {0: ", ".join(self.order0_starts), 1: "single heads", 2: "virtual heads"}
        orders = [
            f"{o.order} {kinds.get(o.order, f'{o.order}-head chains')} {num(o.delta, '+.3f')}"
            for o in self.orders
        ]
        lines = [
            f"TermImportance(clean loss {num(self.clean_loss)} on {self.n_tokens} predicted "
            f"tokens; {self.mode} ablation of each order:",
            wrap("", orders, sep="; "),
        ]
        for what, parts in (("heads", self.heads), ("MLPs", self.mlps)):
            if parts:
                worst = sorted(parts, key=lambda p: -_finite(p.zero_delta))
                top = [f"{p.name} {num(p.zero_delta, '+.3f')}" for p in worst]
                lines.append(wrap(f"{what} knocked out (zero), largest delta: ", capped(top, _TOP)))
        return "\n".join(lines) + ")"

    def table(self) -> str:
        lines = [f"clean loss {self.clean_loss:.4f} on {self.n_tokens} predicted tokens"]
        lines.append(f"{'order':<26} {'terms':>6} {'loss':>8} {'delta':>8}  ({self.mode} ablation)")
        kinds = {0: "direct path", 1: "single heads", 2: "virtual heads"}
        kinds[0] = ", ".join(self.order0_starts)
        for o in self.orders:
            kind = kinds.get(o.order, f"{o.order}-head chains")
            lines.append(f"{o.order} {kind:<24} {o.n_terms:>6} {o.loss:>8.4f} {o.delta:>+8.4f}")
        if self.heads:
            lines.append(
                f"{'head':<6} {'zero loss':>10} {'delta':>8} {'mean loss':>10} {'delta':>8}"
            )
            for h in self.heads:
                lines.append(
                    f"{h.name:<6} {h.zero_loss:>10.4f} {h.zero_delta:>+8.4f} "
                    f"{h.mean_loss:>10.4f} {h.mean_delta:>+8.4f}"
                )
        if self.mlps:
            lines.append(
                f"{'mlp':<6} {'zero loss':>10} {'delta':>8} {'mean loss':>10} {'delta':>8} "
                f"{'paths':>8} {'delta':>8}"
            )
            for m in self.mlps:
                lines.append(
                    f"{m.name:<6} {m.zero_loss:>10.4f} {m.zero_delta:>+8.4f} "
                    f"{m.mean_loss:>10.4f} {m.mean_delta:>+8.4f} "
                    f"{m.paths_loss:>8.4f} {m.paths_delta:>+8.4f}"
                )
        return "\n".join(lines)


@torch.no_grad()
def ablate_orders(
    model: AttnOnlyTransformer,
    tokens: Tensor,
    orders: list[int] | tuple[int, ...],
    mode: str = "zero",
) -> Tensor:
    """Logits [batch, pos, d_vocab] with all terms of the given orders ablated (see module doc)."""
    _check_mode(mode)
    R, logits = order_residuals(model, tokens)
    bad = [k for k in orders if not 0 <= k < R.shape[0]]
    if bad:
        raise QkovError(
            f"orders {bad} do not exist: a {R.shape[0] - 1}-layer model has 0..{R.shape[0] - 1}"
        )
    removed = R[list(orders)].sum(0)  # [batch, pos, d_model]
    if mode == "mean":
        removed = removed - removed.mean(dim=(0, 1), keepdim=True)
    return logits - removed @ _unembed(model)[0]


@torch.no_grad()
def head_ablation_logits(
    model: AttnOnlyTransformer, tokens: Tensor, layer: int, head: int, mode: str = "zero"
) -> Tensor:
    """Logits [batch, pos, d_vocab] with head (layer, head)'s output zeroed or mean-replaced."""
    _check_mode(mode)
    if not (0 <= layer < model.cfg.n_layers and 0 <= head < model.cfg.n_heads):
        raise QkovError(
            f"no head L{layer}H{head} in a model with {model.cfg.n_layers} layers "
            f"of {model.cfg.n_heads} heads"
        )

    # On z (the head's output before W_O, which is linear and per head): zeroing or
    # mean-replacing z[:, head] is exactly that on head_out, without the [batch, head, pos,
    # d_model] tensor.
    def hook(out: Tensor, name: str) -> Tensor:
        out = out.clone()  # [batch, head, pos, d_head]
        if mode == "zero":
            out[:, head] = 0
        else:
            out[:, head] = out[:, head].mean(dim=(0, 1))
        return out

    logits, _ = model.run_with_hooks(tokens, hooks={f"z.{layer}": hook})
    return logits


@torch.no_grad()
def mlp_ablation_logits(
    model: Transformer, tokens: Tensor, layer: int, mode: str = "zero"
) -> Tensor:
    """Logits [batch, pos, d_vocab] with MLP `layer`'s output zeroed or mean-replaced."""
    _check_mode(mode)
    if not (model.cfg.d_mlp and 0 <= layer < model.cfg.n_layers):
        raise QkovError(
            f"no MLP {layer} in a model with {model.cfg.n_layers} layers and "
            f"d_mlp={model.cfg.d_mlp}"
        )

    def hook(out: Tensor, name: str) -> Tensor:  # [batch, pos, d_model]
        return torch.zeros_like(out) if mode == "zero" else out.mean(dim=(0, 1)).expand_as(out)

    logits, _ = model.run_with_hooks(tokens, hooks={f"mlp_out.{layer}": hook})
    return logits


@torch.no_grad()
def term_importance(
    model: AttnOnlyTransformer,
    tokens: Tensor,
    mode: str = "zero",
    per_head: bool = True,
    mean_knockouts: bool = True,
) -> TermImportance:
    """Loss increase on `tokens` [batch, pos] from ablating each path order in turn (patterns
    frozen) and, if per_head, from knocking out each head (zero and mean); with MLPs, each
    MLP knocked out (zero and mean) and its paths removed (frozen, in `mode`). Orders count
    heads on a path from any start, so an MLP's output (and the biases) are in order 0.
    mean_knockouts=False skips the mean knock-outs (their fields are NaN): half the
    forward passes, for callers that read only the zero ones."""
    _check_mode(mode)
    tokens = model.check_tokens(tokens)
    _need_two(tokens)
    cfg = model.cfg
    S, logits, _ = start_order_residuals(model, tokens)
    R = torch.stack(list(S.values())).sum(0)
    clean = _loss(logits, tokens)
    W_U, _ = _unembed(model)

    def without(part: Tensor) -> float:  # loss with `part` [batch, pos, d_model] ablated
        removed = part - part.mean(dim=(0, 1), keepdim=True) if mode == "mean" else part
        return _loss(logits - removed @ W_U, tokens)

    orders = []
    for k in range(cfg.n_layers + 1):
        loss = without(R[k])
        n_terms = math.comb(cfg.n_layers, k) * cfg.n_heads**k
        orders.append(OrderAblation(k, n_terms, loss, loss - clean))
    heads, mlps = [], []
    if per_head:
        for l in range(cfg.n_layers):
            for h in range(cfg.n_heads):
                z = _loss(head_ablation_logits(model, tokens, l, h, "zero"), tokens)
                m = (
                    _loss(head_ablation_logits(model, tokens, l, h, "mean"), tokens)
                    if mean_knockouts
                    else math.nan
                )
                heads.append(HeadAblation(l, h, z, z - clean, m, m - clean))
    for l in range(cfg.n_layers if cfg.d_mlp else 0):
        z = _loss(mlp_ablation_logits(model, tokens, l, "zero"), tokens)
        m = (
            _loss(mlp_ablation_logits(model, tokens, l, "mean"), tokens)
            if mean_knockouts
            else math.nan
        )
        p = without(S[f"mlp{l}"].sum(0))
        mlps.append(MlpAblation(l, z, z - clean, m, m - clean, p, p - clean))
    return TermImportance(
        clean_loss=clean,
        mode=mode,
        orders=tuple(orders),
        heads=tuple(heads),
        n_tokens=tokens.shape[0] * (tokens.shape[1] - 1),
        mlps=tuple(mlps),
        order0_starts=("direct path",) + ("biases",) * cfg.bias + ("MLPs",) * bool(cfg.d_mlp),
    )


_TOP = 5  # heads (and MLPs) a TermImportance's repr lists


def _finite(x: float) -> float:
    return x if math.isfinite(x) else -math.inf
