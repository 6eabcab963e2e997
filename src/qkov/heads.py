"""Head detectors: what each head does, read off the model's own attention patterns.

Every score is a tensor [n_layers, n_heads] computed from the patterns
A [batch, head, destination, source] of a forward pass (Olsson et al., 2022):

    previous_token   mean A[i, i-1]: attention to the previous position
    induction        on a probe ending in a repeated block [.. x_0..x_{h-1} x_0..x_{h-1}]: mean
                     attention from each destination i in the last block to i-h+1, the token
                     AFTER the previous occurrence of the destination token. On other tokens
                     it falls back to the prefix-matching definition below.
    prefix_matching  the same test stated for any text (no known repeat structure needed):
                     attention mass on every source j+1 < i such that token[j] == token[i],
                     averaged over destinations that have one. On the probe it agrees with
                     `induction` up to accidental repeats; on real text it is the one to read.
    duplicate_token  attention mass on earlier occurrences of the destination token itself.
    copying          does what the head moves raise the logit of the token it attends to?
                     Choice: for every source j, the head's direct logit effect
                     e_j = v_j W_O W_U [d_vocab], v_j = x_j W_V + b_V the head's actual value
                     vector (x_j: its normalised input), W_O, W_U of the folded model (norm
                     weights folded in, `qkov.fold`); the final norm's scale (positive) and
                     b_U (the same for every head) change no rank, so they are left out;
                     c_j = 1 - 2 * (rank of token_j in e_j, ties counted half) / (d_vocab-1)
                     in [-1, 1] (1: the head makes its source token the top logit); the score
                     is the attention-weighted mean of c_j over destinations. Direct path only
                     (what later heads and MLPs make of the write is not seen).
    positional       1 - mean total-variation distance between a sequence's attention row and
                     the batch-mean row: 1 when the pattern depends on position only. On the
                     repeated probe every sequence has the same repeat structure, so induction
                     and duplicate-token heads score high too: read it after the others.

The standard probe (`induction_probe`) is a seeded batch of random filler followed by a
random block repeated twice, the block length varying from row to row: with one fixed
period (`repeated_random_tokens`) a head that attends a fixed offset back through W_pos
scores as "induction" too, and models trained on a fixed-period task learn exactly that.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from qkov.circuits import eigenvalue_score, folded, induction_qk_term, ov_eigenvalues
from qkov.composition import CompositionScores, composition_scores
from qkov.data.probes import (
    default_seq_len,
    induction_probe,
)
from qkov.errors import QkovError
from qkov.io import json_safe
from qkov.model import AttnOnlyTransformer, Transformer
from qkov.names import LABELS, SCORE_NAMES

# The short column names of `HeadClassification.table`, explained under it.
COLUMNS = {
    "prev": "previous_token",
    "induct": "induction",
    "dup": "duplicate_token",
    "copy": "copying",
    "pos": "positional",
}
_COPY_CHUNK = 2**24  # elements of the [rows, pos, d_vocab] logit-effect block per step
# copying_score ranks among every logit while tokens * d_vocab * d_head stays under this
# (per head); above it, among a seeded sample of columns (an estimate, recorded by analyze).
COPY_EXACT_BUDGET = 2**30
COPY_MIN_COLUMNS = 1024


# ---------------------------------------------------------------------------- scores per layer
def _masked_mean(pattern: Tensor, mask: Tensor) -> Tensor:
    """Attention mass on `mask` [batch, dest, src], averaged over destinations with any
    masked source. pattern [batch, head, dest, src] -> [head] (NaN if no such destination)."""
    has = mask.any(-1)  # [batch, dest]
    n = int(has.sum())
    if n == 0:
        return torch.full((pattern.shape[1],), float("nan"))
    mass = (pattern * mask[:, None].to(pattern.dtype)).sum(-1)  # [batch, head, dest]
    return (mass * has[:, None]).sum(dim=(0, 2)) / n


def _earlier_same(tokens: Tensor) -> Tensor:
    """[batch, dest, src]: src < dest and token[src] == token[dest]."""
    n = tokens.shape[1]
    same = tokens[:, :, None] == tokens[:, None, :]
    return same & torch.ones(n, n, dtype=torch.bool, device=tokens.device).tril(-1)


def previous_token_score(pattern: Tensor) -> Tensor:
    """pattern [batch, head, dest, src] -> [head]: mean attention from i to i-1 (i >= 1)."""
    if pattern.shape[-1] < 2:
        return torch.full((pattern.shape[1],), float("nan"))
    return pattern.diagonal(offset=-1, dim1=-2, dim2=-1).mean(dim=(0, 2))


def duplicate_token_score(pattern: Tensor, tokens: Tensor) -> Tensor:
    """pattern [batch, head, dest, src], tokens [batch, pos] -> [head]: attention mass on
    earlier occurrences of the destination token."""
    return _masked_mean(pattern, _earlier_same(tokens))


def prefix_matching_score(pattern: Tensor, tokens: Tensor) -> Tensor:
    """pattern [batch, head, dest, src], tokens [batch, pos] -> [head]: attention mass on
    each source j+1 < dest whose predecessor j holds the destination token."""
    same = _earlier_same(tokens)
    after = torch.zeros_like(same)
    after[:, :, 1:] = same[:, :, :-1]
    n = tokens.shape[1]
    after &= torch.ones(n, n, dtype=torch.bool, device=tokens.device).tril(-1)
    return _masked_mean(pattern, after)


def induction_score(
    pattern: Tensor, tokens: Tensor | None, half_len: int | Tensor | None = None
) -> Tensor:
    """pattern [batch, head, dest, src] -> [head]: attention to the token after the previous
    occurrence of the destination token.

    With `half_len` (an int, or [batch] per row: each row ENDS with a block of that length
    repeated twice, as in both probes): mean of A[i, i-h+1] over the last h destinations i.
    Without it: `prefix_matching_score` (then tokens [batch, pos] are needed)."""
    if half_len is None:
        if tokens is None:
            raise QkovError("induction_score needs tokens or half_len")
        return prefix_matching_score(pattern, tokens)
    B, n = pattern.shape[0], pattern.shape[-1]
    h = torch.as_tensor(half_len, device=pattern.device).long().expand(B)[:, None]  # [batch, 1]
    if int(h.min()) < 2 or 2 * int(h.max()) > n:
        raise QkovError(f"half_len {half_len} does not fit sequences of {n} tokens")
    dest = torch.arange(n, device=pattern.device)[None]  # [1, dest]
    src = (dest - h + 1).clamp(min=0)  # [batch, dest]
    mass = pattern.gather(-1, src[:, None, :, None].expand(B, pattern.shape[1], n, 1))[..., 0]
    second = (dest >= n - h).to(pattern.dtype)  # [batch, dest]: destinations in the last block
    return (mass * second[:, None]).sum(dim=(0, 2)) / second.sum()


def positional_score(pattern: Tensor) -> Tensor:
    """pattern [batch, head, dest, src] -> [head]: 1 - mean total-variation distance of each
    row from the batch-mean row (destinations >= 1). NaN for a batch of one."""
    if pattern.shape[0] < 2 or pattern.shape[-1] < 2:
        return torch.full((pattern.shape[1],), float("nan"))
    tv = 0.5 * (pattern - pattern.mean(0, keepdim=True)).abs().sum(-1)  # [batch, head, dest]
    return 1 - tv[..., 1:].mean(dim=(0, 2))


def copying_columns(d_vocab: int, n_tokens: int, d_head: int) -> int | None:
    """How many logit columns `copying_score` compares each source token with: None (all of
    them, exact) while n_tokens * d_vocab * d_head <= COPY_EXACT_BUDGET per head, else the
    seeded sample that fits the budget (at least COPY_MIN_COLUMNS): the score is then an
    estimate."""
    if n_tokens * d_vocab * d_head <= COPY_EXACT_BUDGET:
        return None
    n = max(COPY_MIN_COLUMNS, COPY_EXACT_BUDGET // max(1, n_tokens * d_head))
    return None if n >= d_vocab else n


def copying_score(
    model: Transformer,
    layer: int,
    pattern: Tensor,
    value: Tensor,
    tokens: Tensor,
    n_columns: int | None | str = "auto",
    seed: int = 0,
) -> Tensor:
    """Attention-weighted rank of the source token in the head's direct logit effect.

    pattern [batch, head, dest, src]; value [batch, head, pos, d_head], the layer's value
    vectors (hook `v.{layer}`: normalised input @ W_V + b_V); tokens [batch, pos]. Returns
    [head] in [-1, 1] (see module docstring). Exact on every architecture: the rank of a
    token in v_j W_O W_U (folded weights) is its rank in the head's write to the logits.

    n_columns: None ranks among all d_vocab logits (exact); an int ranks among a seeded
    sample of that many logit columns (`qkov.trigrams.sample_tokens`; the source's own logit
    always counts as itself, never as a rival) and scales the count to d_vocab - 1: an
    unbiased ESTIMATE of the rank, equal to the exact one when the sample is every token.
    "auto": `copying_columns` (exact where that is cheap, e.g. the demo models)."""
    from qkov.trigrams import sample_tokens

    B, n = tokens.shape
    V = model.cfg.d_vocab
    if n_columns == "auto":
        n_columns = copying_columns(V, B * n, model.cfg.d_head)
    w = folded(model).weights()
    cols = sample_tokens(V, n_columns, seed).to(value.device)  # [m] sorted logit columns
    m = cols.numel()
    where = torch.full((V,), -1, dtype=torch.long, device=value.device)
    where[cols] = torch.arange(m, device=value.device)
    slot = where[tokens]  # [batch, pos]: the own token's column in the sample, or -1
    inside = slot >= 0
    n_rivals = (m - inside.float()).clamp(min=1)  # sampled columns other than the own one
    rows = max(1, _COPY_CHUNK // max(1, n * m))
    W_U = w["W_U"].to(value.dtype)  # [d_model, d_vocab]
    W_U_cols, W_U_own = W_U[:, cols], W_U.T[tokens]  # [d_model, m], [batch, pos, d_model]
    out = []
    for h in range(model.cfg.n_heads):
        W_O = w["W_O"][layer, h].to(value.dtype)  # [d_head, d_model]
        OU = W_O @ W_U_cols  # [d_head, m]
        c = torch.empty(B, n, device=value.device)
        for s in range(0, B, rows):
            e = value[s : s + rows, h] @ OU  # [rows, pos, m]
            sl, ins = slot[s : s + rows], inside[s : s + rows]
            own_in = e.gather(-1, sl.clamp(min=0)[..., None])[..., 0]  # exact where inside
            own_out = ((value[s : s + rows, h] @ W_O) * W_U_own[s : s + rows]).sum(-1)
            own = torch.where(ins, own_in, own_out.to(e.dtype))[..., None]  # [rows, pos, 1]
            # rank = rivals above + half the tied ones (the own column, when sampled, ties
            # itself and is no rival). With sign(e - own) summed, s = above - below and
            # above + below + ties = m, so above + ties / 2 = (m + s) / 2: one pass, exact
            # (integers) in float32.
            signs = e.sub_(own).sign_().sum(-1)
            rank = 0.5 * (m + signs - ins.float()) * (V - 1) / n_rivals[s : s + rows]
            c[s : s + rows] = 1 - 2 * rank / max(V - 1, 1)
        weight = pattern[:, h].sum(dim=1)  # [batch, src]: total attention each source gets
        out.append((weight * c).sum() / (B * n))
    return torch.stack(out)


@torch.no_grad()
def attention_patterns(model: AttnOnlyTransformer, tokens: Tensor) -> Tensor:
    """Every head's attention pattern on tokens [batch, pos]:
    [n_layers, batch, n_heads, dest, src] (rows: destinations, summing to 1 over sources)."""
    tokens = model.check_tokens(tokens)
    names = [f"pattern.{l}" for l in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(tokens, names=names)
    return torch.stack([cache[n] for n in names]).float()


# ---------------------------------------------------------------------------- all heads
@dataclass(frozen=True)
class HeadScores:
    """Detector scores for every head, each [n_layers, n_heads]; see the module docstring."""

    previous_token: Tensor
    induction: Tensor
    prefix_matching: Tensor
    duplicate_token: Tensor
    copying: Tensor
    positional: Tensor
    measured_on: str  # "random_tokens" (the seeded induction probe) or "tokens" (given)
    n_sequences: int
    seq_len: int

    def get(self, layer: int, head: int) -> dict[str, float]:
        return {name: float(getattr(self, name)[layer, head]) for name in SCORE_NAMES}

    def best(self, name: str) -> tuple[float, int, int]:
        """(score, layer, head) of the head with the highest `name` score (NaN-safe)."""
        s = torch.nan_to_num(getattr(self, name), nan=-math.inf)
        layer, head = (int(t) for t in torch.unravel_index(s.argmax(), s.shape))
        return float(getattr(self, name)[layer, head]), layer, head

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {n: json_safe(getattr(self, n).tolist()) for n in SCORE_NAMES}
        d.update(measured_on=self.measured_on, n_sequences=self.n_sequences, seq_len=self.seq_len)
        return d


def head_scores(
    model: AttnOnlyTransformer,
    tokens: Tensor | None = None,
    *,
    half_len: int | Tensor | None = None,
    batch: int = 16,
    seq_len: int | None = None,
    seed: int = 0,
    copying: bool = True,
) -> HeadScores:
    """Score every head on `tokens` [batch, pos], or (None) on the seeded `induction_probe`
    (batch x seq_len, default `default_seq_len(n_ctx)`).

    For given tokens that end with a repeated block, pass its `half_len` (int or [batch]) so
    that `induction` uses the known repeat; otherwise it is the prefix-matching score."""
    cfg = model.cfg
    if tokens is None:
        probe = induction_probe(cfg.d_vocab, batch, seq_len or default_seq_len(cfg.n_ctx), seed)
        tokens, half_len, measured_on = probe.tokens, probe.half_lens, "random_tokens"
    else:
        measured_on = "tokens"
    tokens = model.check_tokens(tokens)
    want = ("pattern.", "v.") if copying else ("pattern.",)
    with torch.no_grad():
        _, cache = model.run_with_hooks(tokens, cache_names=lambda n: n.startswith(want))
    rows: dict[str, list[Tensor]] = {name: [] for name in SCORE_NAMES}
    reader = folded(model) if copying else model  # fold once, not per layer
    for l in range(cfg.n_layers):
        A = cache[f"pattern.{l}"].float()
        rows["previous_token"].append(previous_token_score(A))
        rows["induction"].append(induction_score(A, tokens, half_len))
        rows["prefix_matching"].append(prefix_matching_score(A, tokens))
        rows["duplicate_token"].append(duplicate_token_score(A, tokens))
        rows["positional"].append(positional_score(A))
        if copying:
            value = cache[f"v.{l}"].float()
            rows["copying"].append(copying_score(reader, l, A, value, tokens))
        else:
            rows["copying"].append(torch.full((cfg.n_heads,), float("nan")))
    empty = torch.zeros(0, cfg.n_heads)
    stacked = {
        k: (torch.stack([r.float().cpu() for r in v]) if v else empty) for k, v in rows.items()
    }
    return HeadScores(
        **stacked, measured_on=measured_on, n_sequences=tokens.shape[0], seq_len=tokens.shape[1]
    )


# ---------------------------------------------------------------------------- classification
@dataclass(frozen=True)
class Thresholds:
    """Score thresholds of `classify_heads`; partner_z: K-composition z-score against the
    random baseline above which an earlier head counts as an induction head's partner."""

    previous_token: float = 0.4
    induction: float = 0.4
    duplicate_token: float = 0.4
    copying: float = 0.4
    positional: float = 0.9
    partner_z: float = 3.0


@dataclass(frozen=True)
class KPartner:
    """An earlier head read by a later head's key: its K-composition score and its z-score
    (score - baseline mean) / baseline std against random heads of the same shapes."""

    layer: int
    head: int
    score: float
    z: float
    above_baseline: bool

    @property
    def name(self) -> str:
        return f"L{self.layer}H{self.head}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class KnockoutPartner:
    """An earlier head and the induction score of a later head with its output zeroed:
    `drop` = clean score - that score (large: the later head needs this one)."""

    layer: int
    head: int
    induction_score: float
    drop: float

    @property
    def name(self) -> str:
        return f"L{self.layer}H{self.head}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@torch.no_grad()
def knockout_partners(
    model: AttnOnlyTransformer, layer: int, head: int, tokens: Tensor, half_len: int | Tensor
) -> tuple[KnockoutPartner, ...]:
    """Every head of an earlier layer, ranked by how much zeroing its output lowers the
    induction score of (layer, head) on tokens [batch, pos] ending in a repeated block of
    half_len: the causal test of an induction head's previous-token partner. It finds the
    partner also when the key reads it through an MLP, where the weight-based K-composition
    score (a product of the two heads' matrices) does not see it. One forward pass per
    earlier head."""

    def induction(hooks: dict) -> float:
        _, cache = model.run_with_hooks(
            tokens, hooks=hooks, cache_names=lambda n: n == f"pattern.{layer}"
        )
        return float(induction_score(cache[f"pattern.{layer}"], tokens, half_len)[head])

    def zero(h0: int):
        def hook(out: Tensor, name: str) -> Tensor:  # z: [batch, head, pos, d_head]
            out = out.clone()  # zero z of a head = zero its head_out (W_O is per head)
            out[:, h0] = 0
            return out

        return hook

    clean = induction({})
    ranked = []
    for l0 in range(layer):
        for h0 in range(model.cfg.n_heads):
            score = induction({f"z.{l0}": zero(h0)})
            ranked.append(KnockoutPartner(l0, h0, score, clean - score))
    return tuple(sorted(ranked, key=lambda p: -p.drop))


@dataclass(frozen=True)
class HeadRecord:
    """One head: its scores, its label and the score and threshold that decided it.

    For an induction head: every earlier head ranked by K-composition (`k_composition`;
    `partners` keeps those above the baseline) and Sum(lambda)/Sum(|lambda|) of the induction
    QK term through the top-ranked one (`qk_term_eigenvalue_score`), and every earlier head
    ranked by how much knocking it out lowers this head's induction score (`knockout`)."""

    layer: int
    head: int
    label: str  # one of LABELS
    decided_by: str | None  # the score that decided the label (None for "other")
    threshold: float | None
    scores: dict[str, float]
    ov_eigenvalue_score: float  # Sum(lambda)/Sum(|lambda|) of the OV circuit W_E W_OV W_U
    k_composition: tuple[KPartner, ...] = ()
    qk_term_eigenvalue_score: float | None = None
    ov_eigenvalues: Tensor | None = field(default=None, repr=False, compare=False)  # [d_head]
    knockout: tuple[KnockoutPartner, ...] = ()

    @property
    def name(self) -> str:
        return f"L{self.layer}H{self.head}"

    @property
    def partners(self) -> tuple[KPartner, ...]:
        return tuple(p for p in self.k_composition if p.above_baseline)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["k_composition"] = [p.to_dict() for p in self.k_composition]
        d["knockout"] = [p.to_dict() for p in self.knockout]
        d["ov_eigenvalues"] = (
            None
            if self.ov_eigenvalues is None
            else [[float(z.real), float(z.imag)] for z in self.ov_eigenvalues.reshape(-1)]
        )
        d["partners"] = [p.name for p in self.partners]
        return json_safe(d)


@dataclass(frozen=True)
class HeadClassification:
    """`classify_heads` result: a record per head (layer-major), the scores behind it and
    the composition scores its induction partners were ranked by (None below 2 layers)."""

    records: tuple[HeadRecord, ...]
    scores: HeadScores
    thresholds: Thresholds
    composition: CompositionScores | None = field(default=None, repr=False)

    def record(self, layer: int, head: int) -> HeadRecord:
        for r in self.records:
            if (r.layer, r.head) == (layer, head):
                return r
        raise QkovError(f"no head L{layer}H{head} in this classification")

    def with_label(self, label: str) -> list[HeadRecord]:
        if label not in LABELS:
            raise QkovError(f"unknown label {label!r}: use one of {', '.join(LABELS)}")
        return [r for r in self.records if r.label == label]

    def to_dict(self) -> dict[str, Any]:
        return {
            "records": [r.to_dict() for r in self.records],
            "scores": self.scores.to_dict(),
            "thresholds": dataclasses.asdict(self.thresholds),
        }

    def _repr_html_(self) -> str:  # Jupyter: the report's head table (qkov.notebook)
        from qkov.notebook import head_classification_html

        return head_classification_html(self)

    def table(self) -> str:
        """A plain-text table: one row per head, and a legend of its columns."""
        lines = [
            f"{'head':<6} " + " ".join(f"{c:>6}" for c in COLUMNS) + f" {'OV eig':>6}  "
            f"{'label':<15} {'decided by':<24} K-composition partners (score, z)"
        ]
        for r in self.records:
            vals = " ".join(_fmt(r.scores[c], "6.3f") for c in COLUMNS.values())
            why = f"{r.decided_by} >= {r.threshold:g}" if r.decided_by else "-"
            part = ""
            if r.label == "induction":
                part = ", ".join(f"{p.name} ({p.score:.3f}, z={p.z:.1f})" for p in r.partners)
                part = part or "none above baseline"
                if r.qk_term_eigenvalue_score is not None:
                    part += f"; QK term eig {r.qk_term_eigenvalue_score:+.3f}"
                if r.knockout:
                    k = r.knockout[0]
                    part += f"; knocking out {k.name} lowers its score by {k.drop:.2f}"
            ov = _fmt(r.ov_eigenvalue_score, "+6.3f")
            lines.append(f"{r.name:<6} {vals} {ov}  {r.label:<15} {why:<24} {part}".rstrip())
        legend = ", ".join(f"{c} = {n}" for c, n in COLUMNS.items())
        lines.append(
            f"({legend} score, on {self.scores.n_sequences} x {self.scores.seq_len} "
            f"{self.scores.measured_on.replace('_', ' ')}; OV eig = "
            "Sum(lambda)/Sum(|lambda|) of the OV circuit; - : not defined)"
        )
        return "\n".join(lines)


def _fmt(x: float, spec: str) -> str:
    width = int(spec.lstrip("+").split(".")[0])
    return f"{x:{spec}}" if math.isfinite(x) else f"{'-':>{width}}"


def _label(scores: dict[str, float], t: Thresholds) -> tuple[str, str | None, float | None]:
    """Attention labels first (the highest score above its threshold), then copying, then
    positional, else other. NaN scores never pass."""
    attention = [
        ("induction", "induction", t.induction),
        ("previous_token", "previous_token", t.previous_token),
        ("duplicate_token", "duplicate_token", t.duplicate_token),
    ]
    passed = [(scores[k], label, k, th) for label, k, th in attention if scores[k] >= th]
    if passed:
        _, label, key, th = max(passed, key=lambda x: x[0])
        return label, key, th
    if scores["copying"] >= t.copying:
        return "copying", "copying", t.copying
    if scores["positional"] >= t.positional:
        return "positional", "positional", t.positional
    return "other", None, None


def classify_heads(
    model: AttnOnlyTransformer,
    tokens: Tensor | None = None,
    *,
    thresholds: Thresholds | None = None,
    half_len: int | Tensor | None = None,
    batch: int = 16,
    seq_len: int | None = None,
    seed: int = 0,
    n_baseline: int = 200,
    composition: tuple[str, ...] = ("q", "k", "v"),
) -> HeadClassification:
    """Label every head from its scores (on the seeded repeated probe unless `tokens` given)
    and, for each induction head, rank the earlier heads its key reads (K-composition) and
    the earlier heads it needs (`knockout_partners`, on the same tokens when they end in a
    known repeated block). composition: the kinds of composition score computed (the
    partners need K alone; each kind costs ~20 s at TinyLlama-1.1B's 704 heads)."""
    t = thresholds or Thresholds()
    cfg = model.cfg
    scores = head_scores(model, tokens, half_len=half_len, batch=batch, seq_len=seq_len, seed=seed)
    if tokens is None:  # the probe head_scores drew (same seed): for the knock-outs
        probe = induction_probe(cfg.d_vocab, batch, seq_len or default_seq_len(cfg.n_ctx), seed)
        tokens, half_len = probe.tokens, probe.half_lens
    comp = (
        composition_scores(model, n_baseline=n_baseline, seed=seed, kinds=composition)
        if cfg.n_layers > 1
        else None
    )
    records = []
    with torch.no_grad():
        for l in range(cfg.n_layers):
            for h in range(cfg.n_heads):
                s = scores.get(l, h)
                label, key, th = _label(s, t)
                ranked: tuple[KPartner, ...] = ()
                knocked: tuple[KnockoutPartner, ...] = ()
                qk_stat = None
                if label == "induction" and comp is not None and l > 0:
                    ranked = _k_partners(comp, l, h, t.partner_z)
                    term = induction_qk_term(model, l, h, ranked[0].layer, ranked[0].head)
                    qk_stat = eigenvalue_score(term.eigenvalues)
                    if half_len is not None:
                        knocked = knockout_partners(model, l, h, tokens, half_len)
                ov = ov_eigenvalues(model, l, h)
                records.append(
                    HeadRecord(
                        l, h, label, key, th, s, eigenvalue_score(ov), ranked, qk_stat, ov, knocked
                    )
                )
    return HeadClassification(tuple(records), scores, t, comp)


def _k_partners(
    comp: CompositionScores, layer: int, head: int, partner_z: float
) -> tuple[KPartner, ...]:
    """Every head of an earlier layer, ranked by its K-composition into (layer, head), with
    its z-score against the random baseline."""
    mean, std = comp.baseline_mean["k"], comp.baseline_std["k"]
    ranked = []
    for l0 in range(layer):
        for h0 in range(comp.k.shape[1]):
            k = float(comp.k[l0, h0, layer, head])
            z = (k - mean) / std if std > 0 else math.inf
            ranked.append(KPartner(l0, h0, k, z, z >= partner_z))
    return tuple(sorted(ranked, key=lambda p: -p.score))
