"""Path expansion: the logits as an exact sum of paths (start, chain of heads, unembedding).

With the attention patterns, the norm scales and the MLP outputs frozen at a forward pass,
every head is linear in what it reads, so the residual stream entering any layer, and the
logits, split into one term per start (`start_names`) and chain of heads (layers
increasing): the direct path, single heads, virtual heads. `path_expansion` makes the split
at the unembedding, `residual_paths` at any layer (the QK terms of `qkov.qk_terms` read it
on each side of a head). The core invariant, checked by the tests on every architecture:
the terms sum to the model's own logits."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from qkov.config import ModelConfig
from qkov.errors import QkovError
from qkov.model import Transformer

Chain = tuple[tuple[int, int], ...]


def start_names(cfg: ModelConfig) -> list[str]:
    """Where paths start, in order: "token" (W_E), "pos" (W_pos in the stream,
    positional="standard"), "bias" (every constant the model adds: b_V W_O, b_O, b_out, b_U)
    and "mlp{l}" (MLP l's output less b_out, taken from the clean forward pass)."""
    names = ["token"] + (["pos"] if cfg.positional == "standard" else [])
    names += ["bias"] if cfg.bias else []
    return names + [f"mlp{l}" for l in range(cfg.n_layers)] if cfg.d_mlp else names


def count_paths(cfg: ModelConfig, max_order: int | None, n_layers: int | None = None) -> int:
    """The number of terms of a path expansion through the first n_layers layers (default
    all) cut at max_order, as `residual_paths` makes them: each start with every chain of
    at most max_order heads of the layers after it enters (token, pos and bias enter before
    layer 0, mlp{l} after layer l's heads), and the remainder where a cut leaves one. Of the
    folded model the expansions read: a LayerNorm folds into biases (a "bias" start)."""
    L, H = cfg.n_layers if n_layers is None else n_layers, cfg.n_heads

    def chains(layers: int) -> int:  # chains of at most max_order heads through `layers` layers
        top = layers if max_order is None else min(layers, max_order)
        return sum(math.comb(layers, k) * H**k for k in range(top + 1))

    # token; pos in the stream; the constants, which a LayerNorm's fold makes too
    first = 1 + (cfg.positional == "standard") + (cfg.bias or cfg.normalization == "layernorm")
    n = first * chains(L) + (sum(chains(L - 1 - l) for l in range(L)) if cfg.d_mlp else 0)
    return n + (max_order is not None and max_order < L)


def largest_order(cfg: ModelConfig, fits: Callable[[int | None], bool]) -> int | None:
    """The longest cut that fits: None (every chain) if fits(None), else the largest
    max_order k < n_layers with fits(k), 0 at least (per-start direct terms and the exact
    remainder)."""
    for order in (None, *range(cfg.n_layers - 1, 0, -1)):
        if fits(order):
            return order
    return 0


def check_path_memory(
    cfg: ModelConfig, max_order: int | None, need: Callable[[int | None], int], what: str
) -> None:
    """Refuse, before any work, an expansion cut at max_order whose memory need(order) (in
    bytes) is more than half the memory free, naming the max_order that fits (a 12-layer
    model has 13^12 chains per start: it must be cut)."""
    from qkov.resources import available_memory, size_str

    have = available_memory()
    if have is None or need(max_order) <= have // 2:
        return
    k = largest_order(cfg, lambda order: need(order) <= have // 2)
    raise QkovError(
        f"{what} needs ~{size_str(need(max_order))}, more than half the {size_str(have)} "
        f"free: cut it at max_order={k} (paths through more heads are summed into one "
        "exact remainder; on the command line --max-order, or --qk-max-order for QK terms) "
        "or give fewer tokens"
    )


@dataclass
class PathTerm:
    """One term of the path expansion: the logits carried by one path.

    heads: () for the direct path, ((l, h),) for a single head, a longer chain (layers
    increasing) for a virtual head. start: where the path begins (see `start_names`).
    cut: set only on the remainder term of a `max_order` expansion: every path with more
    than `cut` heads, from any start, summed (its order is reported as cut + 1)."""

    heads: Chain
    start: str
    logits: Tensor  # [batch, pos, d_vocab]
    cut: int | None = None

    @property
    def order(self) -> int:
        return len(self.heads) if self.cut is None else self.cut + 1

    @property
    def name(self) -> str:
        if self.cut is not None:
            return f"order>{self.cut}"
        base = ">".join(f"L{l}H{h}" for l, h in self.heads) or "direct"
        return base if self.start == "token" else f"{base}[{self.start}]"

    def __repr__(self) -> str:
        return f"PathTerm({self.name}, logits={list(self.logits.shape)})"


@dataclass
class PathExpansion:
    """logits = sum of terms, attention patterns (and norm scales, MLP outputs) frozen at
    those of the forward pass.

    With positional="standard", W_pos sits in the residual stream beside W_E, so every path
    has a second term starting from W_pos (start="pos"); shortformer and none add none. With
    biases and MLPs, "bias" and each "mlp{l}" start paths too (see `start_names`)."""

    terms: list[PathTerm]
    logits: Tensor  # [batch, pos, d_vocab], the model's own forward pass
    patterns: list[Tensor] = field(repr=False)  # per layer [batch, n_heads, dest, src]

    def total(self) -> Tensor:
        """Sum of all terms [batch, pos, d_vocab]."""
        return torch.stack([t.logits for t in self.terms]).sum(0)

    def max_abs_error(self) -> float:
        """max |sum of terms - model logits|."""
        return float((self.total() - self.logits).abs().max())

    def by_order(self) -> dict[int, Tensor]:
        """Sum of the terms of each order: 0 direct, 1 single heads, k >= 2 virtual heads
        (a max_order remainder counts as order max_order + 1)."""
        out: dict[int, Tensor] = {}
        for t in self.terms:
            out[t.order] = out[t.order] + t.logits if t.order in out else t.logits.clone()
        return out

    def by_start(self) -> dict[str, Tensor]:
        """Sum of the terms of each start (the remainder under "remainder")."""
        out: dict[str, Tensor] = {}
        for t in self.terms:
            key = "remainder" if t.cut is not None else t.start
            out[key] = out[key] + t.logits if key in out else t.logits.clone()
        return out

    def term(self, name: str) -> PathTerm:
        for t in self.terms:
            if t.name == name:
                return t
        raise QkovError(f"no path term named {name!r}: names look like 'direct', 'L0H1>L1H0'")

    @property
    def direct(self) -> list[PathTerm]:
        return [t for t in self.terms if t.order == 0]

    @property
    def heads(self) -> list[PathTerm]:
        return [t for t in self.terms if t.order == 1 and t.cut is None]

    @property
    def virtual_heads(self) -> list[PathTerm]:
        return [t for t in self.terms if t.order >= 2 and t.cut is None]

    def __repr__(self) -> str:
        return (
            f"PathExpansion({len(self.terms)} terms: {len(self.direct)} direct, "
            f"{len(self.heads)} head, {len(self.virtual_heads)} virtual-head; "
            f"logits={list(self.logits.shape)}, max_abs_error={self.max_abs_error():.2e})"
        )

    def _repr_html_(self) -> str:  # Jupyter: the terms as bars (qkov.notebook)
        from qkov.notebook import path_expansion_html

        return path_expansion_html(self)

    def to_dict(self) -> dict[str, object]:
        return {
            "logits_shape": list(self.logits.shape),
            "max_abs_error": self.max_abs_error(),
            "terms": [
                {
                    "name": t.name,
                    "order": t.order,
                    "start": t.start,
                    "heads": [list(lh) for lh in t.heads],
                    "logit_rms": float(t.logits.pow(2).mean().sqrt()),
                }
                for t in self.terms
            ],
        }


def residual_paths(
    model: Transformer,
    tokens: Tensor,
    cache: dict[str, Tensor],
    layer: int,
    max_order: int | None = None,
) -> dict[tuple[str, Chain], Tensor]:
    """The residual stream entering `layer` as a sum of paths, {(start, chain): [batch,
    pos, d_model]}, of a folded model (`qkov.fold`) with the patterns, scales and MLP
    outputs of `cache` frozen: the split `path_expansion` makes before W_U (and
    `qkov.qk_terms` reads on each side of a head). Chains
    longer than max_order heads are summed under ("remainder", ())."""
    cfg, w = model.cfg, model.weights()
    scale = frozen_scales(model, cache)
    batch, n = tokens.shape
    streams: dict[tuple[str, Chain], Tensor] = {("token", ()): w["W_E"][tokens]}
    if cfg.positional == "standard":
        streams[("pos", ())] = w["W_pos"][:n].expand(batch, n, cfg.d_model)
    if cfg.bias:
        streams[("bias", ())] = torch.zeros_like(streams[("token", ())])
    remainder: Tensor | None = None
    for l in range(layer):
        pattern = cache[f"pattern.{l}"]  # [batch, head, dest, src]
        heads = functools.partial(_through_heads, w, l, pattern, scale[l])
        new: dict[tuple[str, Chain], Tensor] = {}
        # Past the cut, paths are only summed: with the patterns frozen the heads are linear,
        # so the remainder and every stream at max_order go through layer l as one sum (one
        # head pass per layer, not one per stream: GPT-2 has ~10^4 streams at order 2).
        carry, carry_b_V = remainder, False
        for (start, chain), x in streams.items():
            bias_direct = start == "bias" and not chain
            if max_order is not None and len(chain) >= max_order:
                carry = x if carry is None else carry + x
                carry_b_V |= bias_direct
                continue
            out = heads(x, bias_direct)
            for h in range(cfg.n_heads):
                new[(start, chain + ((l, h),))] = out[:, h]
        if carry is not None:
            past = heads(carry, carry_b_V).sum(1)  # [batch, pos, d_model]
            remainder = past if remainder is None else remainder + past
        streams.update(new)
        if cfg.bias:
            streams[("bias", ())] = streams[("bias", ())] + w["b_O"][l]
        if cfg.d_mlp:
            b_out = w["b_out"][l] if cfg.bias else 0.0
            streams[(f"mlp{l}", ())] = cache[f"mlp_out.{l}"] - b_out
            if cfg.bias:
                streams[("bias", ())] = streams[("bias", ())] + b_out
    if remainder is not None:
        streams[("remainder", ())] = remainder
    return streams


def _through_heads(
    w: dict[str, Tensor], l: int, pattern: Tensor, scale: Tensor | float, x: Tensor, b_V: bool
) -> Tensor:
    """What layer l's heads write, each on its own, reading x [batch, pos, d_model] with the
    pattern [batch, head, dest, src] and the scale frozen (and b_V: the heads' own constant,
    for the bias start's direct stream): [batch, head, pos, d_model]."""
    v = (x / scale)[:, None] @ w["W_V"][l]  # [batch, head, pos, d_head]
    if b_V:
        v = v + w["b_V"][l][:, None]  # [head, 1, d_head]
    return (pattern @ v) @ w["W_O"][l]


@torch.no_grad()
def path_expansion(
    model: Transformer, tokens: Tensor, max_order: int | None = None
) -> PathExpansion:
    """Split the logits into paths: a start (see `start_names`), a chain of heads, then the
    unembedding. Exact (to float rounding) on every architecture, with these frozen at the
    clean forward pass: attention patterns, norm scales and MLP outputs.

    Learned norms are folded first (`qkov.fold.fold_layernorm`, center_unembed=False), so
    each head reads its input divided by the frozen scale.{l} and the unembedding by
    scale.final. With the patterns A^{l,h} [dest, src] frozen the heads are linear in what
    they read:

        logits = sum over starts x0 and chains (l1,h1) < ... < (lk,hk) of
                 A^{lk,hk} ... A^{l1,h1} x0 W_OV^{l1,h1} ... W_OV^{lk,hk} W_U  (+ b_U)

    A source enters at its layer (mlp{l} after layer l's heads, so only later heads read
    it). The bias start carries every constant: b_O and b_out enter its stream at their
    layer, b_V W_O joins its one-head term, b_U its direct term. An MLP is opaque: what its
    output does is its own start's paths; what its input read is not split.

    There are (1 + n_heads)^n_layers chains per start; with max_order every path longer than
    max_order heads goes into one remainder term (name "order>{max_order}"), so the terms
    still sum to the logits. tokens: [batch, pos] or [pos]."""
    terms, clean, patterns = unembedded_paths(model, tokens, max_order, _full_logits)
    return PathExpansion(terms=terms, logits=clean, patterns=patterns)


def _full_logits(x: Tensor, W_U: Tensor, b_U: Tensor | None) -> Tensor:
    return x @ W_U if b_U is None else x @ W_U + b_U  # [batch, pos, d_vocab]


@torch.no_grad()
def unembedded_paths(
    model: Transformer,
    tokens: Tensor,
    max_order: int | None,
    read: Callable[[Tensor, Tensor, Tensor | None], Tensor],
) -> tuple[list[PathTerm], Tensor, list[Tensor]]:
    """The core of `path_expansion`, with the readout chosen by the caller: (terms, the
    model's own logits [batch, pos, d_vocab], the patterns). Each term's `logits` is
    read(x, W_U, b_U): x [batch, pos, d_model] the path's final stream over the frozen final
    scale, W_U [d_model, d_vocab] of the folded model, b_U [d_vocab] for the one term that
    carries it (the bias start's direct path), else None. `path_expansion` reads whole
    logits; `qkov.attribution.path_contributions` reads only each position's target token
    (d_model per position instead of d_vocab, so a 50k vocabulary costs no more)."""
    from qkov.fold import fold_layernorm

    tokens = model.check_tokens(tokens)
    width = model.cfg.d_model + (model.cfg.d_vocab if read is _full_logits else 0)
    check_path_memory(
        model.cfg,
        max_order,
        lambda order: count_paths(model.cfg, order) * tokens.numel() * width * 4,  # fp32
        f"the path expansion of {count_paths(model.cfg, max_order):,} paths over "
        f"{tokens.numel()} tokens",
    )
    clean = model(tokens)
    model = fold_layernorm(model, center_unembed=False, share=True)
    cfg = model.cfg
    w = model.weights()
    _, cache = model.run_with_cache(tokens, names=_frozen_names)
    patterns = [cache[f"pattern.{l}"] for l in range(cfg.n_layers)]
    scale = frozen_scales(model, cache)
    streams = residual_paths(model, tokens, cache, cfg.n_layers, max_order)
    remainder = streams.pop(("remainder", ()), None)
    b_U = w["b_U"] if cfg.bias else None
    terms = [
        PathTerm(
            chain,
            start,
            read(x / scale[-1], w["W_U"], b_U if (start, chain) == ("bias", ()) else None),
        )
        for (start, chain), x in streams.items()
    ]
    if remainder is not None:
        terms.append(
            PathTerm((), "remainder", read(remainder / scale[-1], w["W_U"], None), max_order)
        )
    rank = {s: i for i, s in enumerate(start_names(cfg) + ["remainder"])}
    terms.sort(key=lambda t: (t.order, t.heads, rank[t.start]))
    return terms, clean, patterns


# Hook kinds a frozen-pattern decomposition reads: the patterns, the scales, the MLP outputs.
FROZEN = ("pattern", "scale", "mlp_out")


def _frozen_names(name: str) -> bool:
    return name.split(".")[0] in FROZEN


def frozen_scales(model: Transformer, cache: dict[str, Tensor]) -> list[Tensor | float]:
    """The divisors of each layer's head input and of the unembedding's input, from a
    forward pass's cache of a folded model (`qkov.fold`): [batch, pos, 1] each with
    normalization="rms", else 1.0."""
    if model.cfg.normalization not in ("none", "rms"):
        raise QkovError(
            f"frozen_scales needs a folded model (normalization 'none' or 'rms'), got "
            f"{model.cfg.normalization!r}: pass qkov.fold.fold_layernorm(model) instead"
        )
    if model.cfg.normalization != "rms":
        return [1.0] * (model.cfg.n_layers + 1)
    return [cache[f"scale.{l}"] for l in range(model.cfg.n_layers)] + [cache["scale.final"]]
