"""Term importance and in-context-learning loss curves (Elhage et al. 2021; Olsson et al. 2022).

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
((n_layers + 1) streams), not per path like `qkov.circuits.path_expansion` ((1 + n_heads)
^ n_layers logit tensors), so it fits real text with a large vocabulary.

Per-head ablation is the ordinary knock-out: a hook on `head_out.{l}` sets one head's output
to 0 ("zero") or to its mean over batch and positions ("mean"); later heads see the change
(patterns not frozen).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from qkov.circuits import frozen_scales
from qkov.errors import QkovError
from qkov.loss import next_token_loss, token_losses
from qkov.model import AttnOnlyTransformer, require_attention_only

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
def order_residuals(model: AttnOnlyTransformer, tokens: Tensor) -> tuple[Tensor, Tensor]:
    """Residual stream split by path order, patterns frozen at the clean pass.

    tokens [batch, pos] -> (R [n_layers + 1, batch, pos, d_model], clean logits
    [batch, pos, d_vocab]); R.sum(0) @ W_U equals the clean logits to float tolerance.
    With normalization="rms" the scales are frozen too, and R is as the unembedding reads
    it (each order divided by the final stream's RMS)."""
    require_attention_only(model, "order_residuals")
    tokens = model.check_tokens(tokens)
    cfg = model.cfg
    w = model.weights()
    logits, cache = model.run_with_hooks(
        tokens, cache_names=lambda n: n in ("embed", "pos_embed") or n.startswith(("pat", "sca"))
    )
    scale = frozen_scales(model, cache)
    x0 = cache["embed"]
    if cfg.positional == "standard":
        x0 = x0 + cache["pos_embed"]
    R = torch.zeros(cfg.n_layers + 1, *x0.shape, dtype=x0.dtype, device=x0.device)
    R[0] = x0
    for l in range(cfg.n_layers):
        A = cache[f"pattern.{l}"]  # [batch, head, dest, src]
        # Orders 0..l exist before layer l; each moves up one order through this layer's heads.
        v = (R[: l + 1] / scale[l])[:, :, None] @ w["W_V"][l]  # [l+1, batch, head, pos, d_head]
        out = ((A @ v) @ w["W_O"][l]).sum(2)  # [l+1, batch, pos, d_model]
        R[1 : l + 2] += out
    return R / scale[-1], logits


@torch.no_grad()
def order_logits(model: AttnOnlyTransformer, tokens: Tensor) -> Tensor:
    """Logits per path order [n_layers + 1, batch, pos, d_vocab]; they sum to the logits."""
    require_attention_only(model, "order_logits")
    R, _ = order_residuals(model, tokens)
    return R @ model.W_U.detach()


# ---------------------------------------------------------------------------- term importance
@dataclass(frozen=True)
class OrderAblation:
    """Loss with all order-`order` terms ablated (0 direct, 1 single heads, 2 virtual heads)."""

    order: int
    n_terms: int  # C(n_layers, order) * n_heads ** order chains of heads
    loss: float
    delta: float  # loss increase over the clean loss


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


@dataclass(frozen=True)
class TermImportance:
    """Term importance on given tokens: clean loss, per-order and per-head ablations."""

    clean_loss: float
    mode: str  # how the order terms were ablated: "zero" or "mean"
    orders: tuple[OrderAblation, ...]
    heads: tuple[HeadAblation, ...]
    n_tokens: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def table(self) -> str:
        lines = [f"clean loss {self.clean_loss:.4f} on {self.n_tokens} predicted tokens"]
        lines.append(f"{'order':<26} {'terms':>6} {'loss':>8} {'delta':>8}  ({self.mode} ablation)")
        kinds = {0: "direct path", 1: "single heads", 2: "virtual heads"}
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
    return logits - removed @ model.W_U.detach()


@torch.no_grad()
def head_ablation_logits(
    model: AttnOnlyTransformer, tokens: Tensor, layer: int, head: int, mode: str = "zero"
) -> Tensor:
    """Logits [batch, pos, d_vocab] with head (layer, head)'s output zeroed or mean-replaced."""
    require_attention_only(model, "head_ablation_logits")
    _check_mode(mode)
    if not (0 <= layer < model.cfg.n_layers and 0 <= head < model.cfg.n_heads):
        raise QkovError(
            f"no head L{layer}H{head} in a model with {model.cfg.n_layers} layers "
            f"of {model.cfg.n_heads} heads"
        )

    def hook(out: Tensor, name: str) -> Tensor:
        out = out.clone()  # [batch, head, pos, d_model]
        if mode == "zero":
            out[:, head] = 0
        else:
            out[:, head] = out[:, head].mean(dim=(0, 1))
        return out

    logits, _ = model.run_with_hooks(tokens, hooks={f"head_out.{layer}": hook})
    return logits


@torch.no_grad()
def term_importance(
    model: AttnOnlyTransformer, tokens: Tensor, mode: str = "zero", per_head: bool = True
) -> TermImportance:
    """Loss increase on `tokens` [batch, pos] from ablating each path order in turn (patterns
    frozen) and, if per_head, from knocking out each head (zero and mean)."""
    require_attention_only(model, "term_importance")
    _check_mode(mode)
    tokens = model.check_tokens(tokens)
    _need_two(tokens)
    cfg = model.cfg
    R, logits = order_residuals(model, tokens)
    clean = _loss(logits, tokens)
    W_U = model.W_U.detach()
    orders = []
    for k in range(cfg.n_layers + 1):
        removed = R[k] - R[k].mean(dim=(0, 1), keepdim=True) if mode == "mean" else R[k]
        loss = _loss(logits - removed @ W_U, tokens)
        n_terms = math.comb(cfg.n_layers, k) * cfg.n_heads**k
        orders.append(OrderAblation(k, n_terms, loss, loss - clean))
    heads = []
    if per_head:
        for l in range(cfg.n_layers):
            for h in range(cfg.n_heads):
                z = _loss(head_ablation_logits(model, tokens, l, h, "zero"), tokens)
                m = _loss(head_ablation_logits(model, tokens, l, h, "mean"), tokens)
                heads.append(HeadAblation(l, h, z, z - clean, m, m - clean))
    return TermImportance(
        clean_loss=clean,
        mode=mode,
        orders=tuple(orders),
        heads=tuple(heads),
        n_tokens=tokens.shape[0] * (tokens.shape[1] - 1),
    )


# ---------------------------------------------------------------------------- in-context learning
@dataclass(frozen=True)
class IclResult:
    """In-context learning score (Olsson et al. 2022): mean loss over a late window of token
    positions minus mean loss over an early window, per sequence, then averaged over the
    sequences with its standard error. Negative: later tokens are predicted better thanks to
    the context.

    Windows are [start, stop) ranges of token indices t (the loss of predicting token t from
    the tokens before it); loss_by_position[t - 1] is the batch-mean loss of token t."""

    score: float
    stderr: float  # standard error of the mean over sequences (NaN for one sequence)
    early: tuple[int, int]
    late: tuple[int, int]
    loss_early: float
    loss_late: float
    n_sequences: int
    loss_by_position: Tensor  # [pos - 1]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["early"], d["late"] = list(self.early), list(self.late)
        d["loss_by_position"] = self.loss_by_position.tolist()
        return {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()
        }


def icl_windows(seq_len: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The sequel's tokens 50 and 500 of a 512-token context, scaled to seq_len and widened
    to windows of w = max(1, seq_len // 16) tokens: the early window is centred on token
    seq_len * 50/512, the late one is the last w tokens. Returns ((a, b), (c, d)),
    1 <= a < b <= c < d = seq_len."""
    if seq_len < 3:
        raise QkovError(f"an ICL score needs sequences of at least 3 tokens, got {seq_len}")
    w = max(1, seq_len // 16)
    late = (seq_len - w, seq_len)
    start = min(max(1, round(seq_len * 50 / 512) - w // 2), late[0] - 1)
    return (start, min(start + w, late[0])), late


def icl_from_logits(
    logits: Tensor,
    tokens: Tensor,
    early: tuple[int, int] | None = None,
    late: tuple[int, int] | None = None,
) -> IclResult:
    """ICL score from a forward pass: logits [batch, pos, d_vocab], tokens [batch, pos];
    windows default to `icl_windows(pos)`."""
    loss = token_losses(logits.detach(), tokens).cpu().double()  # [batch, pos - 1]
    n = tokens.shape[1]
    e, lt = icl_windows(n)
    early, late = tuple(early or e), tuple(late or lt)
    if not (1 <= early[0] < early[1] <= n and 1 <= late[0] < late[1] <= n):
        raise QkovError(f"ICL windows must lie in [1, {n}), got {early} and {late}")
    lo_e = loss[:, early[0] - 1 : early[1] - 1].mean(1)  # [batch]
    lo_l = loss[:, late[0] - 1 : late[1] - 1].mean(1)  # [batch]
    diff = lo_l - lo_e
    B = diff.shape[0]
    stderr = float(diff.std() / math.sqrt(B)) if B > 1 else math.nan
    return IclResult(
        score=float(diff.mean()),
        stderr=stderr,
        early=early,
        late=late,
        loss_early=float(lo_e.mean()),
        loss_late=float(lo_l.mean()),
        n_sequences=B,
        loss_by_position=loss.mean(0).float(),
    )


@torch.no_grad()
def icl_score(
    model: AttnOnlyTransformer,
    tokens: Tensor,
    early: tuple[int, int] | None = None,
    late: tuple[int, int] | None = None,
) -> IclResult:
    """The ICL score of `model` on tokens [batch, pos] (held-out text: the evaluation set);
    see IclResult and `icl_windows`."""
    tokens = model.check_tokens(tokens)
    return icl_from_logits(model(tokens), tokens, early, late)
