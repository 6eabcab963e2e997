"""Q-, K- and V-composition scores between heads of different layers, with a random baseline.

Row-vector convention: an earlier head h0 writes x W_OV^{h0} into the residual stream and a
later head h1 reads it through its query, key or value. The paper's matrices become

    Q-composition: W_OV^{h0} W_QK^{h1}          (h1's queries read h0's output)
    K-composition: W_OV^{h0} (W_QK^{h1})^T      (h1's keys read h0's output)
    V-composition: W_OV^{h0} W_OV^{h1}          (virtual head h0 -> h1)

score(W_A, W_B) = ||W_A W_B||_F / (||W_A||_F ||W_B||_F), as in TransformerLens's
`all_composition_scores` (which puts 0 where this module puts NaN: earlier layer >= later).

On rotary models (GPT-NeoX/Pythia, Llama) W_QK is the unrotated W_Q W_K^T, as
TransformerLens computes these scores: exact for the weights, while the scores the head
computes turn the rotated dims by the relative offset, so Q- and K-composition are an
approximation of what reaches the attention pattern (V-composition involves no rotation
and is exact). Grouped-query heads count once per query head (the fold's per-head copies).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor

from qkov.circuits import W_OV, W_QK
from qkov.errors import QkovError
from qkov.factored import FactoredMatrix
from qkov.io import json_safe
from qkov.model import AttnOnlyTransformer

KINDS = ("q", "k", "v")


def composition_score(W_A: Tensor | FactoredMatrix, W_B: Tensor | FactoredMatrix) -> Tensor:
    """||W_A W_B||_F / (||W_A||_F ||W_B||_F), broadcast over leading (batch) dims.

    W_A [..., m, k], W_B [..., k, n] (dense or factored) -> [...]."""
    A = W_A if isinstance(W_A, FactoredMatrix) else None
    B = W_B if isinstance(W_B, FactoredMatrix) else None
    norm_A = A.norm() if A is not None else torch.linalg.matrix_norm(W_A)
    norm_B = B.norm() if B is not None else torch.linalg.matrix_norm(W_B)
    prod = W_A @ W_B
    norm_AB = prod.norm() if isinstance(prod, FactoredMatrix) else torch.linalg.matrix_norm(prod)
    return norm_AB / (norm_A * norm_B)


@dataclass
class CompositionScores:
    """Scores [n_layers, n_heads, n_layers, n_heads] indexed (earlier layer, earlier head,
    later layer, later head); NaN where earlier layer >= later layer. The baseline is the
    mean and std of the same score for random Gaussian W_Q, W_K, W_V, W_O of the model's
    shapes (the score is scale-free, so the Gaussian's std does not matter)."""

    q: Tensor | None  # None: not computed (`composition_scores(kinds=...)`)
    k: Tensor | None
    v: Tensor | None
    baseline_mean: dict[str, float]
    baseline_std: dict[str, float]
    n_baseline: int

    def get(self, kind: str) -> Tensor:
        kind = kind.lower()
        if kind not in KINDS:
            raise QkovError(f"composition kind {kind!r} is unknown: use one of q, k, v")
        scores = getattr(self, kind)
        if scores is None:
            raise QkovError(
                f"{kind.upper()}-composition was not computed: pass kinds including {kind!r} "
                "to composition_scores"
            )
        return scores

    def top(self, kind: str, n: int = 10) -> list[tuple[int, int, int, int, float]]:
        """The n highest-scoring pairs (l0, h0, l1, h1, score) of one kind."""
        scores = self.get(kind)
        flat = torch.nan_to_num(scores, nan=float("-inf")).flatten()
        n = min(n, int(torch.isfinite(flat).sum()))
        vals, idx = flat.topk(n)
        l0, h0, l1, h1 = (t.tolist() for t in torch.unravel_index(idx, scores.shape))
        return list(zip(l0, h0, l1, h1, vals.tolist(), strict=True))

    def partner(self, layer: int, head: int, kind: str = "k") -> tuple[int, int, float]:
        """The earlier head (l0, h0, score) composing most with head (layer, head)."""
        scores = self.get(kind)
        if not 0 < layer < scores.shape[0] or not 0 <= head < scores.shape[1]:
            raise QkovError(
                f"L{layer}H{head} has no earlier heads to compose with: pick a layer in "
                f"1..{scores.shape[0] - 1} and a head in 0..{scores.shape[1] - 1}"
            )
        col = scores[:layer, :, layer, head]  # [layer, n_heads]
        l0, h0 = (int(t) for t in torch.unravel_index(col.argmax(), col.shape))
        return l0, h0, float(col[l0, h0])

    def __repr__(self) -> str:
        base = ", ".join(
            f"{k}: {self.baseline_mean[k]:.3f}+-{self.baseline_std[k]:.3f}" for k in KINDS
        )
        shape = next(list(s.shape) for s in (self.q, self.k, self.v) if s is not None)
        return f"CompositionScores(shape={shape}, baseline {base})"

    def to_dict(self) -> dict[str, object]:
        return {
            # NaN (no such pair) is not JSON: null; a kind not computed: null
            **{k: _json(getattr(self, k)) for k in KINDS},
            "baseline_mean": dict(self.baseline_mean),
            "baseline_std": dict(self.baseline_std),
            "n_baseline": self.n_baseline,
        }


def _json(scores: Tensor | None) -> list | None:
    return None if scores is None else json_safe(scores.tolist())


def pair_scores(
    OV: FactoredMatrix,
    right: FactoredMatrix,
    later: Iterable[tuple[int, int]] | None = None,
) -> Tensor:
    """composition_score of OV [L, H, D, D] (earlier) with right [L, H, D, D] (later) for
    every pair whose earlier head sits in an earlier layer (NaN elsewhere), through the
    factors. later: the (layer, head) of the later heads scored (None: all; the others'
    columns stay NaN).

    With OV = A0 B0 and right = A1 B1 (rank r), take QR factorisations A0 = Q0 R0 and
    B1^T = Q1 S1: the Q's have orthonormal columns and leave a Frobenius norm unchanged, so
    ||OV right||_F = ||(R0 B0)(A1 S1^T)||_F, a [r, D] x [D, r] product. Each later layer
    costs one [l1 H r, D] x [D, H r] matmul and its squared block sums, never a D x D."""
    L, H = OV.shape[:2]
    chosen = _later_heads(later, L, H)
    if not any(chosen[1:]):  # no later head with an earlier layer: nothing to factor
        dtype = torch.promote_types(OV.A.dtype, torch.float32)  # as `wide` gives below
        return torch.full((L, H, L, H), float("nan"), dtype=dtype, device=OV.A.device)
    wide = lambda t: t.float() if t.dtype in (torch.bfloat16, torch.float16) else t  # noqa: E731
    A0, B0 = wide(OV.A), wide(OV.B)  # [L, H, D, r0], [L, H, r0, D]
    A1, B1 = wide(right.A), wide(right.B)  # [L, H, D, r1], [L, H, r1, D]
    D, r0, r1 = A0.shape[-2], A0.shape[-1], A1.shape[-1]
    left = torch.linalg.qr(A0, mode="r").R @ B0  # [L, H, r0, D]: R0 B0
    ends = A1 @ torch.linalg.qr(B1.transpose(-1, -2), mode="r").R.transpose(-1, -2)  # A1 S1^T
    norm0 = left.square().sum(dim=(-1, -2)).sqrt()  # [L, H] = ||OV||_F
    norm1 = ends.square().sum(dim=(-1, -2)).sqrt()  # [L, H] = ||right||_F
    out = torch.full((L, H, L, H), float("nan"), dtype=left.dtype, device=left.device)
    for l1 in range(1, L):
        hs = chosen[l1]
        if not hs:
            continue
        n1 = len(hs)
        cols = ends[l1, hs].permute(1, 0, 2).reshape(D, n1 * r1)  # [D, (h1, r1)]
        prod = left[:l1].reshape(l1 * H * r0, D) @ cols  # [(l0, h0, r0), (h1, r1)]
        sq = prod.square_().reshape(l1, H, r0, n1, r1).sum(dim=(2, 4))  # [l0, h0, h1]
        out[:l1, :, l1, hs] = sq.sqrt() / (norm0[:l1, :, None] * norm1[l1, hs][None, None])
    return out


def _later_heads(later: Iterable[tuple[int, int]] | None, L: int, H: int) -> list[list[int]]:
    """Per layer, the sorted heads of `later` (all of them for None); refuses a head the
    model does not have."""
    if later is None:
        return [list(range(H)) for _ in range(L)]
    chosen: list[set[int]] = [set() for _ in range(L)]
    for l, h in later:
        if not (0 <= l < L and 0 <= h < H):
            raise QkovError(f"no head L{l}H{h}: the model has {L} layers of {H} heads")
        chosen[l].add(h)
    return [sorted(hs) for hs in chosen]


def _masked(scores: Tensor) -> Tensor:
    L = scores.shape[0]
    earlier = torch.arange(L)[:, None, None, None] < torch.arange(L)[None, None, :, None]
    return scores.masked_fill(~earlier.to(scores.device), float("nan"))


def baseline_scores(
    d_model: int, d_head: int, n_baseline: int = 200, seed: int = 0
) -> dict[str, Tensor]:
    """Scores of random Gaussian heads (factored, rank d_head) per kind: [n_baseline] each."""
    if n_baseline < 2:
        raise QkovError(f"n_baseline must be >= 2 to estimate a spread, got {n_baseline}")
    g = torch.Generator().manual_seed(seed)

    def factors() -> FactoredMatrix:  # W_1 [n, d_model, d_head] @ W_2^T-like [n, d_head, d_model]
        A = torch.randn(n_baseline, d_model, d_head, generator=g)
        B = torch.randn(n_baseline, d_head, d_model, generator=g)
        return FactoredMatrix(A, B)

    # Fresh draws per kind: W_V W_O of h0, then W_Q W_K^T or W_V W_O of h1.
    out = {}
    for kind in KINDS:
        ov0, right = factors(), factors()
        out[kind] = composition_score(ov0, right.T if kind == "k" else right)
    return out


@torch.no_grad()
def composition_scores(
    model: AttnOnlyTransformer,
    n_baseline: int = 200,
    seed: int = 0,
    kinds: tuple[str, ...] = KINDS,
    later: Iterable[tuple[int, int]] | None = None,
) -> CompositionScores:
    """Q-, K-, V-composition scores for every (earlier head, later head) pair + baseline.

    General models are read through their folded weights (`qkov.circuits.W_OV`, `W_QK`: norm
    weights folded in, writes centred for layernorm); the scores are of the weight matrices
    alone, so biases and MLPs (which sit between heads of different layers) are not in them.
    kinds: those computed (the others None); each costs pairs x d_head^2 x d_model, ~20 s
    at TinyLlama-1.1B's 704 heads on 2 cores. later: the (layer, head) of the later heads
    whose columns are computed (None: every head; the other columns stay NaN): the cost is
    in proportion, e.g. an induction head's partners need its column alone."""
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise QkovError(f"composition kind {unknown[0]!r} is unknown: use q, k, v")
    OV, QK = W_OV(model), W_QK(model)
    right = {"q": QK, "k": QK.T, "v": OV}
    later = None if later is None else list(later)
    scores = {k: _masked(pair_scores(OV, right[k], later)) if k in kinds else None for k in KINDS}
    mean, std = baseline_stats(model.cfg.d_model, model.cfg.d_head, n_baseline, seed)
    return CompositionScores(
        **scores, baseline_mean=dict(mean), baseline_std=dict(std), n_baseline=n_baseline
    )


@lru_cache(maxsize=8)
def baseline_stats(
    d_model: int, d_head: int, n_baseline: int = 200, seed: int = 0
) -> tuple[dict[str, float], dict[str, float]]:
    """The mean and standard deviation per kind of `baseline_scores`, kept per shape: a
    training probe asks for the same ones at every step (0.7 s at d_model 512)."""
    base = baseline_scores(d_model, d_head, n_baseline, seed)
    mean = {k: float(s.mean()) for k, s in base.items()}
    return mean, {k: float(s.std()) for k, s in base.items()}


def baseline_z(scores: Tensor, mean: float, std: float) -> Tensor:
    """z-scores of `scores` against a baseline's mean and spread (+inf with no spread)."""
    return (scores - mean) / std if std > 0 else torch.full_like(scores, torch.inf)


def choose_partner(
    k: Tensor, z: Tensor, previous_token: Tensor, partner_z: float, previous_token_min: float
) -> tuple[int, int]:
    """An induction head's previous-token partner (l0, h0) among the earlier heads.

    k, z, previous_token [layer, n_heads]: each earlier head's K-composition into the
    induction head, its z-score against the random baseline, and its previous-token score.
    Of the heads above the baseline (z >= partner_z), the previous-token heads (score >=
    previous_token_min) if there are any, else all of them; of those, the one the key reads
    most (largest k). With none above the baseline, the largest k.

    The largest k alone flips on near-ties: in the shipped attn2 the key of L1H2 reads the
    positional head L0H1 (0.096) a little more than L0H7, the previous-token head (0.092),
    and the QK term through L0H1 is no token match (Sum(lambda)/Sum(|lambda|) 0.41, through
    L0H7 0.94). The paper's partner is the previous-token head."""
    above = z >= partner_z
    prev = above & (previous_token >= previous_token_min)
    pool = prev if bool(prev.any()) else above if bool(above.any()) else torch.ones_like(above)
    flat = torch.where(pool, k.float().nan_to_num(nan=-torch.inf), -torch.inf).flatten()
    i = int(flat.argmax())
    return i // k.shape[1], i % k.shape[1]
