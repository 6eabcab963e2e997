"""QK and OV circuits, the direct path and its bigrams.

(The path expansion, which splits the logits themselves into paths, is `qkov.paths`; the
circuits' eigenvalues and OV statistics are `qkov.eigenvalues`, virtual heads' OV circuits
`qkov.virtual_heads`.)

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

Models with learned norms (layernorm, rmsnorm) are read through `folded`: the norm weights
folded into the weights (`qkov.fold`), leaving normalization="rms". Biases enter the token
circuits where they belong to the head (b_Q, b_K, b_V); MLPs enter the token circuits only
through `effective_embedding=True`, and the path expansion as path starts of their own.

Rotary models (positional="rotary": GPT-NeoX/Pythia, Llama): queries and keys are rotated by
position, so a head's score is q R_{s-p} k^T with R depending on the relative offset s - p
(qkov.rotary). The token QK circuit is therefore stated at one offset (`qk_circuit(...,
offset=0)` by default: same position, where R is the identity and W_QK is the plain
W_Q W_K^T; W_QK and induction_qk_term are at offset 0 too): exact at that offset, an
approximation of the scores at others (the rotated dims turn, the rest do not). OV
circuits, the direct path, the OV eigenvalues and the path expansion never involve the
rotation and stay exact. Grouped-query heads are read through the fold, which gives every
query head its own W_K, W_V.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from qkov.data.tokenizer import decode_token
from qkov.errors import QkovError
from qkov.factored import FactoredMatrix
from qkov.model import AttnOnlyTransformer, Transformer, rms_scale
from qkov.paths import Chain, PathExpansion, PathTerm, path_expansion  # noqa: F401 (their old home)
from qkov.rotary import relative_rotation

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
def folded(model: Transformer) -> Transformer:
    """The model the circuits read: learned norms folded into the weights
    (`qkov.fold.fold_layernorm`, center_unembed=False); the model itself when it has none.
    It shares the tensors the fold leaves as they are (share=True: 1.6 GB less at 1B), so
    it is read, never written, cast or moved."""
    from qkov.fold import fold_layernorm

    return fold_layernorm(model, center_unembed=False, share=True)


def token_embedding(model: Transformer, effective_embedding: bool = False) -> Tensor:
    """Each token's residual vector as the heads read it: [d_vocab, d_model], of the folded
    model (`folded`); with normalization="rms" (and folded layernorm/rmsnorm) each row is
    divided by its RMS (rms_scale), as layer 0 reads a token alone.

    effective_embedding=False: W_E, what layer 0's heads read (exact for them, up to W_pos).
    effective_embedding=True (models with MLPs): W_E plus MLP 0's output on that token alone
    (the MLP reading W_E + b_O of layer 0 through its norm; layer 0's attention and W_pos
    ignored), the token as layer 1 and later read it when MLP 0 acts as part of the
    embedding (GPT-2). An approximation: the attention output it leaves out is real."""
    model = folded(model)
    W_E, eps = model.W_E.detach(), model.cfg.norm_eps
    if not effective_embedding:  # every circuit of every head asks: computed once per W_E
        return cached(model, "token_embedding", lambda: _plain_embedding(model), W_E)
    if effective_embedding and model.cfg.d_mlp and model.cfg.n_layers:
        x = W_E + model.b_O[0].detach() if model.cfg.bias else W_E
        x = x / rms_scale(x, eps) if model.cfg.normalization == "rms" else x
        with torch.no_grad():
            W_E = W_E + model._mlp(x[None], 0)[0]
    return W_E / rms_scale(W_E, eps) if model.cfg.normalization == "rms" else W_E


def _plain_embedding(model: Transformer) -> Tensor:
    W_E = model.W_E.detach()
    rms = model.cfg.normalization == "rms"
    return W_E / rms_scale(W_E, model.cfg.norm_eps) if rms else W_E


def cached(model: Transformer, name: str, make: Callable[[], Any], *inputs: Tensor) -> Any:
    """make(), kept on `model` (a folded model) until one of `inputs` changes (a new tensor,
    or an in-place write, which bumps its version)."""
    key = _cache_key(inputs)
    store = model.__dict__.setdefault("_qkov_circuit_cache", {})
    if name in store and store[name][0] == key:
        return store[name][1]
    value = make()
    store[name] = (key, value)
    return value


def is_cached(model: Transformer, name: str, *inputs: Tensor) -> bool:
    """Whether `cached(model, name, ..., *inputs)` would return a value without making it."""
    store = model.__dict__.get("_qkov_circuit_cache", {})
    return name in store and store[name][0] == _cache_key(inputs)


def _cache_key(inputs: tuple[Tensor, ...]) -> list[tuple]:
    return [(t.data_ptr(), t._version, t.dtype, t.device) for t in inputs]


def W_QK(model: Transformer) -> FactoredMatrix:
    """W_Q W_K^T of the folded model for every head: [n_layers, n_heads, d_model, d_model]
    (no 1/sqrt(d_head), no biases: the bilinear form alone)."""
    w = folded(model).weights()
    return FactoredMatrix(w["W_Q"], w["W_K"].transpose(-1, -2))


def W_OV(model: Transformer) -> FactoredMatrix:
    """W_V W_O of the folded model for every head: [n_layers, n_heads, d_model, d_model]
    (no b_V: the linear map alone)."""
    w = folded(model).weights()
    return FactoredMatrix(w["W_V"], w["W_O"])


def qk_circuit(
    model: Transformer, layer: int, head: int, effective_embedding: bool = False, offset: int = 0
) -> FactoredMatrix:
    """Token QK circuit (E W_Q + b_Q)(E W_K + b_K)^T: [d_vocab (destination), d_vocab
    (source)], E = token_embedding(model, effective_embedding), weights folded.

    Exact for layer 0 of a model without W_pos in the stream, up to the 1/sqrt(d_head) and
    the per-position norm scale (a layernorm/rmsnorm model reads each token over its own
    RMS here, over the RMS of token + position in the model). Later layers read more than
    tokens (earlier heads, MLPs): for them it is the embedding part only.

    Rotary models: the circuit at relative offset `offset` (source position minus
    destination position, <= 0 under the causal mask), (E W_Q + b_Q) R_offset (E W_K +
    b_K)^T; exact at that offset only (see the module docstring). Other models ignore it."""
    check_head(model, layer, head)
    m = folded(model)
    w, E = m.weights(), token_embedding(m, effective_embedding)
    q, k = E @ w["W_Q"][layer, head], E @ w["W_K"][layer, head]
    if m.cfg.bias:
        q, k = q + w["b_Q"][layer, head], k + w["b_K"][layer, head]
    c = m.cfg
    if c.positional == "rotary" and offset:
        R = relative_rotation(c, offset)
        q = q @ R.to(device=q.device, dtype=q.dtype)  # [d_vocab, d_head]
    return FactoredMatrix(q, k.T)


def ov_circuit(
    model: Transformer,
    layer: int,
    head: int,
    effective_embedding: bool = False,
    sources: Tensor | None = None,
    W_OU: Tensor | None = None,
) -> FactoredMatrix:
    """Token OV circuit (E W_V + b_V) W_O W_U: [d_vocab (source), d_vocab (out logit)], E =
    token_embedding(model, effective_embedding), weights folded (W_U carries the final
    norm's weight). What attending to a source token writes straight to the logits: exact
    for the direct effect up to the final norm's per-position scale; it leaves out what
    later heads and MLPs make of the write. sources: only these source tokens' rows
    ([len(sources), d_vocab]; the left factor costs its rows alone). W_OU: the head's W_O W_U
    [d_head, d_vocab] where the caller formed it (`qkov.trigrams.head_factors`)."""
    check_head(model, layer, head)
    m = folded(model)
    w = m.weights()
    E = token_embedding(m, effective_embedding)
    v = (E if sources is None else E[sources.to(E.device)]) @ w["W_V"][layer, head]
    v = v + w["b_V"][layer, head] if m.cfg.bias else v
    return FactoredMatrix(v, w["W_O"][layer, head] @ w["W_U"] if W_OU is None else W_OU)


def direct_path(model: Transformer, effective_embedding: bool = False) -> FactoredMatrix:
    """E W_U: [d_vocab, d_vocab], the bigram table of the zero-layer path (weights folded;
    b_U, a constant per out token, is left out). Exact for a 0-layer model; with layers it
    ignores every head, and it ignores the MLPs unless effective_embedding=True (then MLP 0
    on the token alone is included; later MLPs are still left out)."""
    m = folded(model)
    return FactoredMatrix(token_embedding(m, effective_embedding), m.W_U.detach())


@dataclass(frozen=True)
class QKTerms:
    """The four parts of a head's attention score when its input is token + position.

    Rows are destinations, columns sources; score = sum of the four / sqrt(d_head). Exact
    for layer 0 (shortformer or standard) of a bias-free model; weights are folded, and
    b_Q, b_K (bias=True) are left out; for later layers it covers only the embedding part
    of the residual stream."""

    token_token: FactoredMatrix  # W_E   W_QK W_E^T    [d_vocab, d_vocab]
    token_pos: FactoredMatrix  # W_E   W_QK W_pos^T  [d_vocab, n_ctx]: dest token x src pos
    pos_token: FactoredMatrix  # W_pos W_QK W_E^T    [n_ctx, d_vocab]: dest pos x src token
    pos_pos: FactoredMatrix  # W_pos W_QK W_pos^T  [n_ctx, n_ctx]

    def __repr__(self) -> str:
        # rows: the destination's token (d_vocab) or position (n_ctx), columns: the source's
        axis = {"token": "d_vocab", "pos": "n_ctx"}
        terms = ",\n".join(
            f"  {name} [{axis[name.split('_')[0]]}={fm.shape[-2]}, "
            f"{axis[name.split('_')[1]]}={fm.shape[-1]}] {float(fm.norm()):.3g}"
            for name, fm in vars(self).items()
        )
        return (
            f"QKTerms(destination x source, rank <= {self.token_token.rdim}; "
            f"Frobenius norms:\n{terms})"
        )

    def to_dict(self) -> dict[str, dict[str, object]]:
        return {
            name: {"shape": list(fm.shape), "frobenius_norm": float(fm.norm())}
            for name, fm in vars(self).items()
        }


def qk_positional_terms(model: AttnOnlyTransformer, layer: int, head: int) -> QKTerms:
    """Token/position split of the QK circuit: W_pos W_QK W_pos^T and the cross terms."""
    model = _with_w_pos(model, layer, head)
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


# ---------------------------------------------------------------------- norm scales


@dataclass(frozen=True)
class FinalScale:
    """The final norm's divisor over the positions of some tokens: what turns a head's
    token OV circuit (and so its skip-trigram boosts), which reads normalised tokens but
    writes into the stream before the final norm, into logits at a position: logit = value
    / scale. (Not the direct path: `direct_path` reads each token over its own RMS, which
    for a 0-layer model is exactly the final norm, so its bigrams are already logits there;
    elsewhere see `embedding_rms`.)"""

    median: float
    p10: float
    p90: float
    n_positions: int

    def __repr__(self) -> str:
        return (
            f"FinalScale(median {self.median:.3f}, p10-p90 {self.p10:.3f}-{self.p90:.3f} "
            f"over {self.n_positions} positions)"
        )

    def to_dict(self) -> dict[str, Any]:
        return {"median": self.median, "p10": self.p10, "p90": self.p90,
                "n_positions": self.n_positions}  # fmt: skip


@torch.no_grad()
def final_norm_scale(model: Transformer, tokens: Tensor) -> FinalScale | None:
    """The final norm's per-position divisor (hook scale.final or ln_final_scale) over
    tokens [batch, pos]: its median and 10th/90th percentiles. None for a model without a
    final norm (normalization="none"), whose circuits are already in logits."""
    if model.cfg.normalization == "none":
        return None
    names = ("scale.final", "ln_final_scale")
    _, cache = model.run_with_cache(tokens, lambda name: name in names)
    s = next(cache[n] for n in names if n in cache).flatten().float()
    q = torch.quantile(s, torch.tensor([0.5, 0.1, 0.9], device=s.device)).tolist()
    return FinalScale(q[0], q[1], q[2], s.numel())


@torch.no_grad()
def embedding_rms(model: Transformer) -> dict[str, Any] | None:
    """The RMS of each row of W_E (the folded model's: centred for layernorm), the divisor
    `direct_path` reads each token over: median and 10th/90th percentiles over the
    vocabulary ({"median", "p10", "p90", "n_tokens"}); None without normalization.

    The direct path is then exact only where the final norm divides by that same RMS (a
    0-layer model with no W_pos in the stream). Elsewhere the final norm divides the whole
    stream at position i by its scale s_i, and the logit the current token t adds directly
    is the table's value x rms(W_E[t]) / s_i."""
    m = folded(model)
    if m.cfg.normalization != "rms":  # what the folded model's norms all become
        return None
    r = rms_scale(m.W_E.detach(), m.cfg.norm_eps).flatten().float()
    q = torch.quantile(r, torch.tensor([0.5, 0.1, 0.9], device=r.device)).tolist()
    return {"median": q[0], "p10": q[1], "p90": q[2], "n_tokens": r.numel()}


def induction_qk_term(
    model: AttnOnlyTransformer, layer: int, head: int, src_layer: int, src_head: int
) -> FactoredMatrix:
    """The K-composition term of head (layer, head) through earlier head (src_layer, src_head):
    W_E W_QK^{h1} (W_E W_OV^{h0})^T [d_vocab (destination token), d_vocab (token h0 moved
    into the source position)], kept factored with inner dim d_head:
    A = W_E W_Q^{h1} [d_vocab, d_head], B = (W_E W_V^{h0} W_O^{h0} W_K^{h1})^T [d_head, d_vocab].
    Token matching shows as mostly positive eigenvalues. Positions are not in this term, nor
    are biases or MLPs (weights are folded: `folded`)."""
    model = folded(model)
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
def top_bigrams(
    model: AttnOnlyTransformer, k: int = 20, n_rows: int | None = None, seed: int = 0
) -> list[dict[str, Any]]:
    """The k largest entries of the direct path W_E W_U with each row centred (softmax
    ignores a constant per row): [{"current", "out", "logit"}], the logit added to `out`
    when the current token is `current`. Rows are formed CHUNK_ELEMENTS at a time; the
    vocab x vocab table never exists.

    n_rows: an ESTIMATE for large vocabularies: only the rows of a seeded sample of n_rows
    current tokens (`qkov.trigrams.sample_tokens`; outs range over the whole vocabulary), so
    the list is the exact top-k of that sample. None (or >= d_vocab): every row, exact.
    Time: n_rows * d_vocab * d_model (d_vocab^2 * d_model when exact)."""
    from qkov.trigrams import sample_tokens

    table = direct_path(model)
    V = model.cfg.d_vocab
    rows = sample_tokens(V, n_rows, seed).to(table.device)  # [R] current tokens, sorted
    chunk = max(1, CHUNK_ELEMENTS // V)
    best_v, best_i = torch.empty(0), torch.empty(0, dtype=torch.long)
    for start in range(0, rows.numel(), chunk):
        ids = rows[start : start + chunk]
        block = (table.A[ids] @ table.B).float()  # [c, V]
        block = block - block.mean(dim=1, keepdim=True)
        v, i = block.flatten().topk(min(k, block.numel()))
        best_v = torch.cat([best_v, v.cpu()])
        best_i = torch.cat([best_i, ids.cpu()[i.cpu() // V] * V + i.cpu() % V])  # into [V, V]
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


# ---------------------------------------------------------------------- positional QK
@torch.no_grad()
def positional_qk(
    model: Transformer, layer: int, head: int, n_positions: int | None = None
) -> Tensor:
    """W_pos W_QK W_pos^T / sqrt(d_head): [n_positions (destination), n_positions (source)],
    the position x position QK term of head (layer, head) (weights folded; the first
    n_positions positions, default n_ctx). A previous-token head shows the off-diagonal
    (source = destination - 1). Exact for layer 0 up to the norm scale; later layers read
    more than W_pos."""
    model = _with_w_pos(model, layer, head)
    n = min(n_positions or model.cfg.n_ctx, model.cfg.n_ctx)
    w = model.weights()
    P = w["W_pos"][:n]  # the pos_pos term of qk_positional_terms, without its token factors
    return (P @ w["W_Q"][layer, head]) @ (P @ w["W_K"][layer, head]).T / model.cfg.d_head**0.5


def _with_w_pos(model: Transformer, layer: int, head: int) -> Transformer:
    """The folded model, after checking the head and that the model has a W_pos."""
    check_head(model, layer, head)
    if model.cfg.positional in ("none", "rotary"):
        raise QkovError(
            f"this model has positional={model.cfg.positional!r}, so its QK circuit has no "
            "W_pos terms: use qk_circuit instead (with offset= for a rotary model)"
        )
    return folded(model)


# Moved out of this module, which each of their modules imports: the names callers import
# from here load from there on first use (PEP 562).
_MOVED = {
    "eigenvalue_score": "qkov.eigenvalues",
    "qk_eigenvalues": "qkov.eigenvalues",
    "ov_eigenvalues": "qkov.eigenvalues",
    "top1_self_fraction": "qkov.eigenvalues",
    "OVStatistics": "qkov.eigenvalues",
    "ov_statistics": "qkov.eigenvalues",
    "ov_statistics_all": "qkov.eigenvalues",
    "OVCopying": "qkov.eigenvalues",
    "ov_copying": "qkov.eigenvalues",
    "ov_copying_all": "qkov.eigenvalues",
    "virtual_head_ov": "qkov.virtual_heads",
}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module 'qkov.circuits' has no attribute {name!r}")
