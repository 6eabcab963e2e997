"""QK expansion: a head's attention scores split into terms by the paths its query and key read.

The paper's 2-layer QK terms ("both Q-composition and K-composition come into play"). With
the attention patterns of earlier layers, the norm scales and the MLP outputs frozen at the
clean forward pass, the residual stream entering layer l is exactly a sum of paths, as in
`qkov.paths.path_expansion`: a start (the token embedding, the positions, the biases or
an MLP's output) then a chain of earlier heads. Head (l, h)'s query and key are linear in
that stream, so with q = sum_i q_i and k = sum_j k_j

    scores[b, d, s] = q[b, d] . k[b, s] / sqrt(d_head)
                    = sum_{i, j} q_i[b, d] . k_j[b, s] / sqrt(d_head)

one term per (query-side path, key-side path). A side is

    token, pos, bias, mlp{l}   a start read directly (the direct path)
    L0H1, L0H1>L1H0, L0H1[pos] a chain through earlier heads (on the query side that is
                               Q-composition, on the key side K-composition)

With positional="shortformer" W_pos enters the query and key only (after the norm): it is
the side "pos" and no chain starts from it. b_Q and b_K belong to the "bias" side (with
every constant that entered the stream: b_O, b_out). Row-vector convention (x @ W).

Exact on every architecture qkov's model has (learned norms are folded first, as in
path_expansion): the terms sum to the hook `scores.{l}` before the causal mask, to float
rounding. Term sizes ignore what softmax ignores: a constant per destination row.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

from qkov.circuits import check_head
from qkov.errors import QkovError
from qkov.model import Transformer
from qkov.paths import Chain, check_path_memory, count_paths, frozen_scales, residual_paths

KINDS = ("direct", "Q-composition", "K-composition", "Q+K-composition")
QK_MAX_ORDER = 2  # what `qkov heads --qk-terms` and analyze cut chains at (the paper's terms)


def side_name(start: str, heads: Chain) -> str:
    """'token', 'pos', 'mlp0' for a start read directly; 'L0H1' (from the token),
    'L0H1>L1H0', 'L0H1[pos]' for a chain; 'order>k' for a max_order remainder."""
    if not heads:
        return start
    chain = ">".join(f"L{l}H{h}" for l, h in heads)
    return chain if start == "token" else f"{chain}[{start}]"


@dataclass
class QKTerm:
    """One term: what the query-side path and the key-side path give the score together."""

    query_start: str
    query_heads: Chain
    key_start: str
    key_heads: Chain
    scores: Tensor = field(repr=False)  # [batch, dest, src], before the causal mask

    @property
    def query(self) -> str:
        return side_name(self.query_start, self.query_heads)

    @property
    def key(self) -> str:
        return side_name(self.key_start, self.key_heads)

    @property
    def name(self) -> str:
        return f"{self.query} \u00b7 {self.key}"  # "token · L0H1": query side · key side

    @property
    def kind(self) -> str:
        """direct (no head on either side), Q-composition (heads on the query side only),
        K-composition (key side only) or Q+K-composition (both); a remainder side counts as
        a chain of heads."""
        q = bool(self.query_heads) or self.query_start == "remainder"
        k = bool(self.key_heads) or self.key_start == "remainder"
        return KINDS[q + 2 * k]

    def size(self) -> float:
        """Row-centred RMS over the causal entries (src <= dest): softmax ignores a
        constant per destination, so a term that only shifts whole rows has size 0."""
        return centred_rms(self.scores)

    def __repr__(self) -> str:
        return f"QKTerm({self.name}, {self.kind}, scores={list(self.scores.shape)})"


def _causal(scores: Tensor) -> Tensor:
    n = scores.shape[-1]
    return torch.ones(n, n, dtype=torch.bool, device=scores.device).tril()


def _n_causal(scores: Tensor) -> int:
    n = scores.shape[-1]
    return max(1, scores[..., 0, 0].numel() * n * (n + 1) // 2)


def row_centred(scores: Tensor) -> Tensor:
    """[..., dest, src] with each destination's mean over its causal sources subtracted;
    the entries above the diagonal set to 0."""
    mask = _causal(scores)
    kept = scores.masked_fill(~mask, 0.0)
    mean = kept.sum(-1, keepdim=True) / mask.sum(-1, keepdim=True)
    return (kept - mean).masked_fill(~mask, 0.0)


def centred_rms(scores: Tensor) -> float:
    """RMS of `row_centred(scores)` over the causal entries: a term's size."""
    return float(row_centred(scores).pow(2).sum().div(_n_causal(scores)).sqrt())


@dataclass
class QKExpansion:
    """Head (layer, head)'s scores [batch, dest, src] (scaled, before the causal mask) as a
    sum of terms; `scores` is the model's own."""

    layer: int
    head: int
    terms: list[QKTerm]
    scores: Tensor = field(repr=False)  # [batch, dest, src], the hook scores.{l} unmasked

    def total(self) -> Tensor:
        return torch.stack([t.scores for t in self.terms]).sum(0)

    def max_abs_error(self) -> float:
        """max |sum of terms - scores| over the causal entries (the ones the model uses)."""
        mask = _causal(self.scores)
        return float((self.total() - self.scores)[..., mask].abs().max())

    def term(self, name: str) -> QKTerm:
        for t in self.terms:
            if t.name == name:
                return t
        raise QkovError(f"no QK term named {name!r}: names look like 'token \u00b7 L0H1'")

    def ranked(self) -> list[tuple[QKTerm, float]]:
        """Terms with their size (`QKTerm.size`), largest first."""
        sized = [(t, t.size()) for t in self.terms]
        return sorted(sized, key=lambda ts: -ts[1])

    def by_kind(self) -> dict[str, float]:
        """The size of each kind's summed scores (kinds present only), largest first: the
        paper's bar chart of which terms matter."""
        sums: dict[str, Tensor] = {}
        for t in self.terms:
            sums[t.kind] = sums[t.kind] + t.scores if t.kind in sums else t.scores
        sizes = {k: centred_rms(s) for k, s in sums.items()}
        return dict(sorted(sizes.items(), key=lambda kv: -kv[1]))

    def summary(self, n_terms: int = 5) -> dict[str, object]:
        """The record `qkov heads --qk-terms` prints and analysis.json stores."""
        return {
            "layer": self.layer,
            "head": self.head,
            "kinds": [{"kind": k, "size": v} for k, v in self.by_kind().items()],
            "terms": [
                {"name": t.name, "kind": t.kind, "query": t.query, "key": t.key, "size": s}
                for t, s in self.ranked()[:n_terms]
            ],
            "n_terms": len(self.terms),
            "max_abs_error": self.max_abs_error(),
        }

    def to_dict(self) -> dict[str, object]:
        return self.summary(n_terms=len(self.terms))

    def __repr__(self) -> str:
        return (
            f"QKExpansion(L{self.layer}H{self.head}, {len(self.terms)} terms, "
            f"max_abs_error={self.max_abs_error():.2e})"
        )


# Hook kinds read: the patterns, scales and MLP outputs frozen, and the scores compared with.
_FROZEN = ("pattern", "scale", "mlp_out", "scores", "q", "k")


def qk_expansion(
    model: Transformer, tokens: Tensor, layer: int, head: int, max_order: int | None = None
) -> QKExpansion:
    """Split head (layer, head)'s attention scores on `tokens` ([batch, pos] or [pos]) into
    one term per (query-side path, key-side path) (see the module docstring). Exact: the
    terms sum to the hook `scores.{layer}` before the mask.

    max_order: chains of more than max_order heads go into one "remainder" side, so the
    number of sides stays (starts x (1 + n_heads)^max_order) in deep models."""
    return next(qk_expansions(model, tokens, [(layer, head)], max_order))


def qk_expansion_all(
    model: Transformer, tokens: Tensor, max_order: int | None = None
) -> list[QKExpansion]:
    """qk_expansion of every head, layer-major."""
    return list(qk_expansions(model, tokens, None, max_order))


@torch.no_grad()
def qk_expansions(
    model: Transformer,
    tokens: Tensor,
    heads: Iterable[tuple[int, int]] | None = None,
    max_order: int | None = None,
) -> Iterator[QKExpansion]:
    """qk_expansion of each (layer, head) of `heads` (None: every head, layer-major), made
    one at a time: the fold and the forward pass once, the paths into a layer once for its
    heads. A caller that keeps each head's `summary()` holds one head's terms at a time (a
    head of a d_model 2048 model with MLPs has ~10^3 terms of [batch, pos, pos]). Every head
    and the memory of the largest expansion are checked before any work."""
    from qkov.fold import fold_layernorm

    cfg = model.cfg
    if heads is None:
        heads = [(l, h) for l in range(cfg.n_layers) for h in range(cfg.n_heads)]
    heads = list(heads)
    for layer, head in heads:
        check_head(model, layer, head)
    if max_order is not None and max_order < 0:
        raise QkovError(f"max_order must be >= 0 (or None for every chain), got {max_order}")
    tokens = model.check_tokens(tokens)
    if not heads:
        return
    (batch, n), (deepest, its_head) = tokens.shape, max(heads)  # the most paths

    def need(order: int | None) -> int:  # fp32 bytes: a layer's streams, then a head's terms
        sides = count_paths(cfg, order, deepest) + (cfg.positional == "shortformer")
        return 4 * (sides * batch * n * cfg.d_model + sides**2 * batch * n * n)

    check_path_memory(cfg, max_order, need, f"the QK expansion of L{deepest}H{its_head}")
    model = fold_layernorm(model, center_unembed=False, share=True)
    cfg, w = model.cfg, model.weights()
    _, cache = model.run_with_cache(tokens, names=lambda n: n.split(".")[0] in _FROZEN)
    scale = frozen_scales(model, cache)
    inv = 1.0 / math.sqrt(cfg.d_head)
    streams, streams_of = {}, None
    for layer, head in heads:
        if streams_of != layer:
            streams = residual_paths(model, tokens, cache, layer, max_order)
            streams = {key: x / scale[layer] for key, x in streams.items()}  # as heads read it
            streams_of = layer
        W_Q, W_K = w["W_Q"][layer, head], w["W_K"][layer, head]  # [d_model, d_head]
        q_sides = {key: x @ W_Q for key, x in streams.items()}  # [batch, pos, d_head]
        k_sides = {key: x @ W_K for key, x in streams.items()}
        if cfg.positional == "shortformer":  # W_pos is added after the norm, to q and k only
            P = w["W_pos"][:n].expand(batch, n, cfg.d_model)
            q_sides[("pos", ())], k_sides[("pos", ())] = P @ W_Q, P @ W_K
        if cfg.bias:
            for sides, b in ((q_sides, w["b_Q"][layer, head]), (k_sides, w["b_K"][layer, head])):
                sides[("bias", ())] = sides.get(("bias", ()), 0.0) + b.expand(batch, n, -1)
        terms = [
            QKTerm(qs, qc, ks, kc, (q @ k.transpose(-1, -2)) * inv)  # [batch, dest, src]
            for (qs, qc), q in q_sides.items()
            for (ks, kc), k in k_sides.items()
        ]
        clean = cache[f"q.{layer}"][:, head] @ cache[f"k.{layer}"][:, head].transpose(-1, -2)
        yield QKExpansion(layer=layer, head=head, terms=terms, scores=clean * inv)


def qk_terms_table(expansions: list[QKExpansion], n_terms: int = 3) -> str:
    """Per head: the term kinds by size, then its largest terms (the text `qkov heads
    --qk-terms` prints)."""
    lines = []
    for qe in expansions:
        kinds = ", ".join(f"{k} {v:.3f}" for k, v in qe.by_kind().items())
        lines.append(f"L{qe.layer}H{qe.head:<3} kinds: {kinds}")
        for t, size in qe.ranked()[:n_terms]:
            lines.append(f"        {size:7.3f}  {t.name}  ({t.kind})")
    lines.append(
        "(size: RMS of the term's scores over causal (destination, source) pairs, each "
        "destination's mean removed; query side \u00b7 key side)"
    )
    return "\n".join(lines)
