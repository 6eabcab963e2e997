"""QK and OV circuits, the direct path and its bigrams, path expansion, OV eigenvalues.

Row-vector convention (as in the code, x @ W; the paper writes the transposes). For head
(l, h) with a destination residual vector x_d and a source vector x_s:

    attention score  = x_d W_QK x_s^T / sqrt(d_head),   W_QK = W_Q W_K^T   [d_model, d_model]
    written output   = x_s W_OV,                         W_OV = W_V W_O     [d_model, d_model]

Over tokens: QK circuit `W_E W_QK W_E^T` ([destination, source]) and OV circuit
`W_E W_OV W_U` ([source, out]), both vocab x vocab of rank <= d_head, so they stay
factored (FactoredMatrix) and are never formed whole.

With normalization="rms", W_E in the token circuits is `token_embedding(model)`: each
token's row divided by its RMS, which is exactly what the first layer's heads read. Later
layers and the unembedding divide by the RMS of the whole stream at that position, a
positive per-position number the token circuits leave out (as the paper leaves out the
LayerNorm scale): signs, eigenvalue signs and each row's ranking are unaffected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from qkov.data.tokenizer import decode_token
from qkov.errors import QkovError
from qkov.factored import FactoredMatrix
from qkov.model import AttnOnlyTransformer, require_attention_only, rms_scale

# Elements of one dense chunk of a vocab x vocab circuit (rows formed at once): 16 MiB of fp32.
CHUNK_ELEMENTS = 2**22


def check_head(model: AttnOnlyTransformer, layer: int, head: int) -> None:
    cfg = model.cfg
    if not 0 <= layer < cfg.n_layers:
        raise QkovError(
            f"layer {layer} does not exist: the model has n_layers={cfg.n_layers} "
            f"(layers 0..{cfg.n_layers - 1})"
        )
    if not 0 <= head < cfg.n_heads:
        raise QkovError(
            f"head {head} does not exist: the model has n_heads={cfg.n_heads} "
            f"(heads 0..{cfg.n_heads - 1})"
        )


# ---------------------------------------------------------------------- circuits
def token_embedding(model: AttnOnlyTransformer) -> Tensor:
    """W_E as the first layer's heads read it: [d_vocab, d_model]; with normalization="rms"
    each row is divided by its RMS (the scale rms_scale gives)."""
    W_E = model.W_E.detach()
    return W_E / rms_scale(W_E) if model.cfg.normalization == "rms" else W_E


def W_QK(model: AttnOnlyTransformer) -> FactoredMatrix:
    """W_Q W_K^T for every head: [n_layers, n_heads, d_model, d_model] (no 1/sqrt(d_head))."""
    require_attention_only(model, "W_QK")
    w = model.weights()
    return FactoredMatrix(w["W_Q"], w["W_K"].transpose(-1, -2))


def W_OV(model: AttnOnlyTransformer) -> FactoredMatrix:
    """W_V W_O for every head: [n_layers, n_heads, d_model, d_model]."""
    require_attention_only(model, "W_OV")
    w = model.weights()
    return FactoredMatrix(w["W_V"], w["W_O"])


def qk_circuit(model: AttnOnlyTransformer, layer: int, head: int) -> FactoredMatrix:
    """Token QK circuit W_E W_Q W_K^T W_E^T: [d_vocab (destination), d_vocab (source)]."""
    require_attention_only(model, "qk_circuit")
    check_head(model, layer, head)
    w, E = model.weights(), token_embedding(model)
    return FactoredMatrix(E @ w["W_Q"][layer, head], (E @ w["W_K"][layer, head]).T)


def ov_circuit(model: AttnOnlyTransformer, layer: int, head: int) -> FactoredMatrix:
    """Token OV circuit W_E W_V W_O W_U: [d_vocab (source), d_vocab (out logit)]."""
    require_attention_only(model, "ov_circuit")
    check_head(model, layer, head)
    w = model.weights()
    return FactoredMatrix(
        token_embedding(model) @ w["W_V"][layer, head], w["W_O"][layer, head] @ w["W_U"]
    )


def direct_path(model: AttnOnlyTransformer) -> FactoredMatrix:
    """W_E W_U: [d_vocab, d_vocab], the bigram table of the zero-layer path."""
    require_attention_only(model, "direct_path")
    return FactoredMatrix(token_embedding(model), model.W_U.detach())


@dataclass(frozen=True)
class QKTerms:
    """The four parts of a head's attention score when its input is token + position.

    Rows are destinations, columns sources; score = sum of the four / sqrt(d_head). Exact
    for layer 0 (shortformer or standard); for later layers it covers only the embedding
    part of the residual stream."""

    token_token: FactoredMatrix  # W_E   W_QK W_E^T    [d_vocab, d_vocab]
    token_pos: FactoredMatrix  # W_E   W_QK W_pos^T  [d_vocab, n_ctx]: dest token x src pos
    pos_token: FactoredMatrix  # W_pos W_QK W_E^T    [n_ctx, d_vocab]: dest pos x src token
    pos_pos: FactoredMatrix  # W_pos W_QK W_pos^T  [n_ctx, n_ctx]

    def to_dict(self) -> dict[str, dict[str, object]]:
        return {
            name: {"shape": list(fm.shape), "frobenius_norm": float(fm.norm())}
            for name, fm in vars(self).items()
        }


def qk_positional_terms(model: AttnOnlyTransformer, layer: int, head: int) -> QKTerms:
    """Token/position split of the QK circuit: W_pos W_QK W_pos^T and the cross terms."""
    require_attention_only(model, "qk_positional_terms")
    check_head(model, layer, head)
    if model.cfg.positional == "none":
        raise QkovError(
            "this model has positional='none', so its QK circuit has no positional terms: "
            "use qk_circuit instead"
        )
    w = model.weights()
    E, P = token_embedding(model), w["W_pos"]
    Q, K = w["W_Q"][layer, head], w["W_K"][layer, head]
    EQ, PQ, EK, PK = E @ Q, P @ Q, E @ K, P @ K  # [*, d_head]
    return QKTerms(
        token_token=FactoredMatrix(EQ, EK.T),
        token_pos=FactoredMatrix(EQ, PK.T),
        pos_token=FactoredMatrix(PQ, EK.T),
        pos_pos=FactoredMatrix(PQ, PK.T),
    )


# ---------------------------------------------------------------------- path expansion
Chain = tuple[tuple[int, int], ...]


@dataclass
class PathTerm:
    """One term of the path expansion: the logits carried by one path.

    heads: () for the direct path, ((l, h),) for a single head, a longer chain (layers
    increasing) for a virtual head. start: where the path begins, "token" (W_E) or "pos"
    (W_pos in the residual stream, positional="standard" only)."""

    heads: Chain
    start: str
    logits: Tensor  # [batch, pos, d_vocab]

    @property
    def order(self) -> int:
        return len(self.heads)

    @property
    def name(self) -> str:
        base = ">".join(f"L{l}H{h}" for l, h in self.heads) or "direct"
        return base if self.start == "token" else f"{base}[pos]"

    def __repr__(self) -> str:
        return f"PathTerm({self.name}, logits={list(self.logits.shape)})"


@dataclass
class PathExpansion:
    """logits = sum of terms, attention patterns frozen at those of the forward pass.

    With positional="standard", W_pos sits in the residual stream beside W_E, so every path
    has a second term starting from W_pos (start="pos"); shortformer and none add none."""

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
        """Sum of the terms of each order: 0 direct, 1 single heads, k >= 2 virtual heads."""
        out: dict[int, Tensor] = {}
        for t in self.terms:
            out[t.order] = out[t.order] + t.logits if t.order in out else t.logits.clone()
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
        return [t for t in self.terms if t.order == 1]

    @property
    def virtual_heads(self) -> list[PathTerm]:
        return [t for t in self.terms if t.order >= 2]

    def __repr__(self) -> str:
        return (
            f"PathExpansion({len(self.terms)} terms: {len(self.direct)} direct, "
            f"{len(self.heads)} head, {len(self.virtual_heads)} virtual-head; "
            f"logits={list(self.logits.shape)}, max_abs_error={self.max_abs_error():.2e})"
        )

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


@torch.no_grad()
def path_expansion(
    model: AttnOnlyTransformer, tokens: Tensor, max_order: int | None = None
) -> PathExpansion:
    """Split the logits into the direct path, each head and each virtual head (any depth).

    With the attention patterns A^{l,h} [dest, src] frozen, the model is linear in its
    residual input x0 (W_E[tokens], plus W_pos with positional="standard"):

        logits = x0 W_U + sum over chains (l1,h1) < ... < (lk,hk) of
                 A^{lk,hk} ... A^{l1,h1} x0 W_OV^{l1,h1} ... W_OV^{lk,hk} W_U

    There are (1 + n_heads)^n_layers chains per source; max_order drops chains longer than
    that (the terms then no longer sum to the logits). tokens: [batch, pos] or [pos].
    With normalization="rms" the per-position scales are frozen too: each head reads its
    input divided by scale.{l}, the unembedding by scale.final, and the sum stays exact."""
    require_attention_only(model, "path_expansion")
    tokens = model.check_tokens(tokens)
    cfg = model.cfg
    w = model.weights()
    names = [f"pattern.{l}" for l in range(cfg.n_layers)]
    logits, cache = model.run_with_cache(tokens, names=lambda n: n.split(".")[0] in FROZEN)
    patterns = [cache[n] for n in names]
    scale = frozen_scales(model, cache)
    batch, n = tokens.shape
    starts = {"token": w["W_E"][tokens]}  # path start -> [batch, pos, d_model]
    if cfg.positional == "standard":
        starts["pos"] = w["W_pos"][:n].expand(batch, n, cfg.d_model)
    streams: dict[tuple[str, Chain], Tensor] = {(s, ()): x for s, x in starts.items()}
    for l in range(cfg.n_layers):
        new: dict[tuple[str, Chain], Tensor] = {}
        for (start, chain), x in streams.items():
            if max_order is not None and len(chain) >= max_order:
                continue
            v = (x / scale[l])[:, None] @ w["W_V"][l]  # [batch, head, pos, d_head]
            out = (patterns[l] @ v) @ w["W_O"][l]  # [batch, head, pos, d_model]
            for h in range(cfg.n_heads):
                new[(start, chain + ((l, h),))] = out[:, h]
        streams.update(new)
    terms = [
        PathTerm(chain, start, (x / scale[-1]) @ w["W_U"]) for (start, chain), x in streams.items()
    ]
    terms.sort(key=lambda t: (t.order, t.heads, t.start != "token"))
    return PathExpansion(terms=terms, logits=model(tokens), patterns=patterns)


# Hook kinds a frozen-pattern decomposition reads: the patterns and the rms scales.
FROZEN = ("pattern", "scale")


def frozen_scales(model: AttnOnlyTransformer, cache: dict[str, Tensor]) -> list[Tensor | float]:
    """The divisors of each layer's head input and of the unembedding's input, from a
    forward pass's cache: [batch, pos, 1] each with normalization="rms", else 1.0."""
    if model.cfg.normalization != "rms":
        return [1.0] * (model.cfg.n_layers + 1)
    return [cache[f"scale.{l}"] for l in range(model.cfg.n_layers)] + [cache["scale.final"]]


# ---------------------------------------------------------------------- OV eigenvalues
def eigenvalue_score(eigenvalues: Tensor) -> float:
    """Sum(lambda) / sum(|lambda|) using real parts in the numerator: in [-1, 1].

    Of an OV circuit (`ov_eigenvalue_score`): near 1 the circuit mostly raises what it
    reads (the paper's copying eigenvalues), near -1 it suppresses it. Of a QK term: near 1
    it matches tokens. (The behavioural copying score is `qkov.heads.copying_score`.)"""
    total = float(eigenvalues.abs().sum())
    if total == 0.0:
        return float("nan")
    return float(eigenvalues.real.sum()) / total


def ov_eigenvalues(model: AttnOnlyTransformer, layer: int, head: int) -> Tensor:
    """Nonzero spectrum [d_head] (complex) of the OV circuit W_E W_OV W_U.

    Same nonzero eigenvalues as the d_model x d_model W_OV W_U W_E; computed from the even
    smaller d_head x d_head W_O W_U W_E W_V, never the vocab x vocab matrix."""
    return ov_circuit(model, layer, head).eigenvalues


@torch.no_grad()
def top1_self_fraction(circuit: FactoredMatrix, chunk_size: int | None = None) -> float:
    """Fraction of rows i of a square circuit whose largest entry is (strictly) column i.

    For an OV circuit: the fraction of tokens whose own logit is the top-1 output when the
    head attends to them. Rows are formed chunk_size at a time (default: 16 MiB of fp32),
    so memory stays O(chunk_size * d_vocab)."""
    if circuit.ndim != 2 or circuit.shape[0] != circuit.shape[1]:
        raise QkovError(f"top1_self_fraction needs one square matrix, got {list(circuit.shape)}")
    n = circuit.shape[0]
    chunk = chunk_size or max(1, CHUNK_ELEMENTS // n)
    if chunk < 1:
        raise QkovError(f"chunk_size must be >= 1, got {chunk_size}")
    hits = 0
    for start in range(0, n, chunk):
        block = circuit.rows(start, start + chunk).dense(force=True)  # [c, n]
        idx = torch.arange(block.shape[0], device=block.device)
        own = block[idx, start + idx].clone()
        block[idx, start + idx] = float("-inf")
        hits += int((own > block.max(dim=-1).values).sum())
    return hits / n


@dataclass
class OVStatistics:
    """The OV circuit's eigenvalues, their Sum(lambda)/Sum(|lambda|), and its top-1 fraction."""

    layer: int
    head: int
    eigenvalues: Tensor  # [d_head] complex
    eigenvalue_score: float  # sum(lambda) / sum(|lambda|)
    top1_fraction: float  # tokens whose own logit is top-1 in their OV row

    def __repr__(self) -> str:
        return (
            f"OVStatistics(L{self.layer}H{self.head}, "
            f"eigenvalue_score={self.eigenvalue_score:+.3f}, "
            f"top1_fraction={self.top1_fraction:.3f})"
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "layer": self.layer,
            "head": self.head,
            "eigenvalue_score": self.eigenvalue_score,
            "top1_fraction": self.top1_fraction,
            "eigenvalues": [[float(z.real), float(z.imag)] for z in self.eigenvalues],
        }


@torch.no_grad()
def ov_statistics(
    model: AttnOnlyTransformer, layer: int, head: int, chunk_size: int | None = None
) -> OVStatistics:
    """OV eigenvalues, their Sum(lambda)/Sum(|lambda|) and the top-1 self fraction of head
    (layer, head)."""
    circuit = ov_circuit(model, layer, head)
    eig = circuit.eigenvalues
    return OVStatistics(
        layer=layer,
        head=head,
        eigenvalues=eig,
        eigenvalue_score=eigenvalue_score(eig),
        top1_fraction=top1_self_fraction(circuit, chunk_size),
    )


def ov_statistics_all(
    model: AttnOnlyTransformer, chunk_size: int | None = None
) -> list[OVStatistics]:
    """ov_statistics for every head, layer-major."""
    return [
        ov_statistics(model, l, h, chunk_size)
        for l in range(model.cfg.n_layers)
        for h in range(model.cfg.n_heads)
    ]


def induction_qk_term(
    model: AttnOnlyTransformer, layer: int, head: int, src_layer: int, src_head: int
) -> FactoredMatrix:
    """The K-composition term of head (layer, head) through earlier head (src_layer, src_head):
    W_E W_QK^{h1} (W_E W_OV^{h0})^T [d_vocab (destination token), d_vocab (token h0 moved
    into the source position)], kept factored with inner dim d_head:
    A = W_E W_Q^{h1} [d_vocab, d_head], B = (W_E W_V^{h0} W_O^{h0} W_K^{h1})^T [d_head, d_vocab].
    Token matching shows as mostly positive eigenvalues. Positions are not in this term."""
    require_attention_only(model, "induction_qk_term")
    if not 0 <= src_layer < layer < model.cfg.n_layers:
        raise QkovError(
            f"K-composition needs an earlier head: got layer {src_layer} -> layer {layer} "
            f"in a {model.cfg.n_layers}-layer model"
        )
    W_E = token_embedding(model)
    A = W_E @ model.W_Q[layer, head].detach()
    W_V0, W_O0 = model.W_V[src_layer, src_head].detach(), model.W_O[src_layer, src_head].detach()
    moved = (W_E @ W_V0) @ W_O0  # [d_vocab, d_model]: what h0 writes when it attends to a token
    B = (moved @ model.W_K[layer, head].detach()).T
    return FactoredMatrix(A, B)


@torch.no_grad()
def top_bigrams(model: AttnOnlyTransformer, k: int = 20) -> list[dict[str, Any]]:
    """The k largest entries of the direct path W_E W_U with each row centred (softmax
    ignores a constant per row): [{"current", "out", "logit"}], the logit added to `out`
    when the current token is `current`. Rows are formed CHUNK_ELEMENTS at a time; the
    vocab x vocab table never exists."""
    table = direct_path(model)
    V = model.cfg.d_vocab
    chunk = max(1, CHUNK_ELEMENTS // V)
    best_v, best_i = torch.empty(0), torch.empty(0, dtype=torch.long)
    for start in range(0, V, chunk):
        block = table.rows(start, start + chunk).dense(force=True).float()  # [c, V]
        block = block - block.mean(dim=1, keepdim=True)
        v, i = block.flatten().topk(min(k, block.numel()))
        best_v = torch.cat([best_v, v.cpu()])
        best_i = torch.cat([best_i, i.cpu() + start * V])  # flat index into [V, V]
        best_v, order = best_v.topk(min(k, best_v.numel()))
        best_i = best_i[order]
    current, out = torch.unravel_index(best_i, (V, V))
    return [
        {
            "current": decode_token(model.tokenizer, c),
            "out": decode_token(model.tokenizer, o),
            "logit": v,
        }
        for c, o, v in zip(current.tolist(), out.tolist(), best_v.tolist(), strict=True)
    ]


# Names from before "copying" meant only the behavioural score (kept for existing code).
OVCopying = OVStatistics
ov_copying = ov_statistics
ov_copying_all = ov_statistics_all
