"""Head classification: each head labelled from its detector scores (`qkov.heads`) and, for an
induction head, the earlier heads it reads: ranked by K-composition and by knock-out."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from qkov.budget import partner_knockouts
from qkov.circuits import induction_qk_term
from qkov.composition import (
    KINDS,
    CompositionScores,
    baseline_z,
    choose_partner,
    composition_scores,
)
from qkov.data.probes import (
    default_seq_len,
    induction_probe,
)
from qkov.data.tokenizer import start_ids
from qkov.eigenvalues import eigenvalue_score, ov_eigenvalues
from qkov.errors import QkovError
from qkov.heads import HeadScores, head_scores, measurement
from qkov.io import json_safe
from qkov.knockouts import KnockoutPartner, knockouts
from qkov.knockouts import knockout_partners as knockout_partners  # its old import path
from qkov.model import AttnOnlyTransformer
from qkov.names import LABELS
from qkov.reprs import axes, capped, num, wrap

# The short column names of `HeadClassification.table`, explained under it.
COLUMNS = {
    "prev": "previous_token",
    "induct": "induction",
    "dup": "duplicate_token",
    "copy": "copying",
    "pos": "positional",
}


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

    def __repr__(self) -> str:
        above = "above" if self.above_baseline else "not above"
        z = num(self.z, ".1f")
        return f"KPartner({self.name}, score={num(self.score)}, z={z}, {above} baseline)"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class HeadRecord:
    """One head: its scores, its label and the score and threshold that decided it.

    For an induction head: every earlier head ranked by K-composition (`k_composition`;
    `partners` keeps those above the baseline), `partner`, the previous-token head its key
    reads most (`qkov.composition.choose_partner`; None when no head is above the baseline),
    Sum(lambda)/Sum(|lambda|) of the induction QK term through it (through the top-ranked
    head when there is none: `qk_term_eigenvalue_score`), and every earlier head ranked by
    how much knocking it out lowers this head's induction score (`knockout`)."""

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
    partner: KPartner | None = None

    @property
    def name(self) -> str:
        return f"L{self.layer}H{self.head}"

    @property
    def partners(self) -> tuple[KPartner, ...]:
        """The earlier heads above the baseline: `partner` first, then by K-composition."""
        above = [p for p in self.k_composition if p.above_baseline and p != self.partner]
        return (self.partner, *above) if self.partner else tuple(above)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["k_composition"] = [p.to_dict() for p in self.k_composition]
        d["knockout"] = [p.to_dict() for p in self.knockout]
        d["ov_eigenvalues"] = (
            None
            if self.ov_eigenvalues is None
            else [[float(z.real), float(z.imag)] for z in self.ov_eigenvalues.reshape(-1)]
        )
        d["partner"] = None if self.partner is None else self.partner.to_dict()
        d["partners"] = [p.name for p in self.partners]
        return json_safe(d)

    def __repr__(self) -> str:
        scores = " ".join(f"{c} {num(self.scores.get(n))}" for c, n in COLUMNS.items())
        lines = [
            f"HeadRecord({_summary(self)}, OV eig {num(self.ov_eigenvalue_score, '+.3f')}",
            f"  scores: {scores}",
        ]
        if self.k_composition:
            ranked = [f"{p.name} ({num(p.score)}, z={num(p.z, '.1f')})" for p in self.k_composition]
            lead = f"K-composition ({len(self.partners)} above baseline): "
            lines.append(wrap(lead, capped(ranked, 3)))
        if self.qk_term_eigenvalue_score is not None:
            lines.append(f"  QK term eig {num(self.qk_term_eigenvalue_score, '+.3f')}")
        if self.knockout:
            k = self.knockout[0]
            lines.append(
                f"  knocking out {k.name} lowers its induction score by {num(k.drop, '.2f')}"
            )
        return "\n".join(lines) + ")"


@dataclass(frozen=True)
class HeadClassification:
    """`classify_heads` result: a record per head (layer-major), the scores behind it and
    the composition scores its induction partners were ranked by (None below 2 layers)."""

    records: tuple[HeadRecord, ...]
    scores: HeadScores
    thresholds: Thresholds
    composition: CompositionScores | None = field(default=None, repr=False)
    # the earlier heads the induction heads' knock-outs ran over when `budget.PARTNER_BUDGET`
    # cut them (previous-token heads first, then by K-composition); None: every earlier head
    knockout_heads: tuple[tuple[int, int], ...] | None = None

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
            "knockout_heads": (
                None if self.knockout_heads is None else [list(hd) for hd in self.knockout_heads]
            ),
        }

    def knockout_note(self) -> str | None:
        """What the knock-out ranking rests on when the budget cut it, else None."""
        if self.knockout_heads is None:
            return None
        names = ", ".join(f"L{l}H{h}" for l, h in self.knockout_heads) or "none"
        return (
            f"knock-outs over the budget at this size: only {len(self.knockout_heads)} earlier "
            f"heads were knocked out ({names}: the previous-token heads, then those highest by "
            "K-composition)"
        )

    def __repr__(self) -> str:
        """Labelled heads grouped by label (best first, `_PER_LABEL` of each), the rest
        counted."""
        counts = {lab: len(self.with_label(lab)) for lab in LABELS}
        tally = [f"{n} {lab}" for lab, n in counts.items() if n]
        shape = axes(self.scores.induction.shape, ("layer", "head"))
        lines = [
            f"HeadClassification({len(self.records)} heads {shape} on {measurement(self.scores)}",
            wrap("labels: ", tally or ["none"]),
        ]
        for lab in LABELS[:-1]:
            group = sorted(self.with_label(lab), key=lambda r: -_decisive(r))
            lines += [f"  {_summary(r)}" for r in group[:_PER_LABEL]]
            if len(group) > _PER_LABEL:
                lines.append(f"  ... and {len(group) - _PER_LABEL} more {lab}")
        if counts["other"]:
            lines.append(f"  {counts['other']} other: no score above its threshold")
        return "\n".join(lines) + ")"

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
            "Sum(lambda)/Sum(|lambda|) of the OV circuit; - : not defined"
            + (
                "; partners: above the random baseline, first the partner, the previous-token "
                "head the key reads most, through which the QK term is read)"
                if any(r.k_composition for r in self.records)
                else ")"
            )
        )
        if self.knockout_note():
            lines.append(f"({self.knockout_note()})")
        return "\n".join(lines)


_PER_LABEL = 5  # heads of each label a HeadClassification's repr lists


def _decisive(r: HeadRecord) -> float:
    """The score that decided r's label (NaN-safe for sorting)."""
    x = r.scores.get(r.decided_by, math.nan) if r.decided_by else math.nan
    return x if math.isfinite(x) else -math.inf


def _summary(r: HeadRecord) -> str:
    """'L1H6 induction 0.869 (partner L0H7, z=72.6)': a head's label, the score that decided
    it and, for an induction head, its partner (`HeadRecord.partner`)."""
    if r.decided_by is None:
        return f"{r.name} {r.label}"
    out = f"{r.name} {r.label} {num(r.scores.get(r.decided_by))}"
    if r.label == "induction" and r.k_composition:
        p = r.partner
        out += f" (partner {p.name}, z={num(p.z, '.1f')})" if p else " (no partner above baseline)"
    return out


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
    composition: tuple[str, ...] = KINDS,
    knockout: bool = True,
    log: Callable[[str], None] | None = None,
    token_losses: bool = False,
) -> HeadClassification:
    """Label every head from its scores (on the seeded repeated probe unless `tokens` given)
    and, for each induction head, rank the earlier heads its key reads (K-composition) and
    the earlier heads it needs (`knockout_partners`, on the same tokens when they end in a
    known repeated block). composition: the kinds of composition score computed for every
    pair of heads (in `.composition`; each kind costs ~20 s at TinyLlama-1.1B's 704 heads);
    the partners' K-composition into the induction heads is computed either way, so () or
    ("q", "v") leaves `.composition.k` NaN outside the induction heads' columns.
    knockout=False skips the knock-outs (one pass per earlier head; past
    `budget.PARTNER_BUDGET` only the likeliest partners: `knockout_heads` names them).
    log: called with a line as each part starts (a minute on a 1B model).
    token_losses: keep the model's loss on each probe token in `.scores.token_losses`
    (`head_scores`)."""
    t = thresholds or Thresholds()
    cfg = model.cfg
    scores = head_scores(
        model,
        tokens,
        half_len=half_len,
        batch=batch,
        seq_len=seq_len,
        seed=seed,
        token_losses=token_losses,
        log=log,
    )
    if tokens is None:  # the probe head_scores drew (same seed): for the knock-outs
        probe = induction_probe(
            cfg.d_vocab,
            batch,
            seq_len or default_seq_len(cfg.n_ctx),
            seed,
            prefix=start_ids(model.tokenizer),
        )
        tokens, half_len = probe.tokens, probe.half_lens
    say = log or (lambda line: None)
    heads = [(l, h) for l in range(cfg.n_layers) for h in range(cfg.n_heads)]
    labels = {hd: _label(scores.get(*hd), t) for hd in heads}
    inductions = [(l, h) for l, h in heads if labels[l, h][0] == "induction" and l > 0]
    comp = None
    if cfg.n_layers > 1:
        comp = _composition(model, composition, inductions, n_baseline, seed, say)
    knocked_out, cut = {}, None
    if knockout and comp is not None and half_len is not None and inductions:
        last = max(l for l, _ in inductions)
        ranked = _likeliest_partners(comp, scores, labels, inductions)
        chosen = partner_knockouts(cfg, ranked, last, tokens.numel(), tokens.shape[1])
        cut_note = "" if len(chosen) == len(ranked) else f" (of {len(ranked)}: the budget)"
        say(
            f"knock-outs of {len(chosen)} earlier heads{cut_note} for "
            f"{len(inductions)} induction heads"
        )
        knocked_out = knockouts(model, inductions, tokens, half_len, candidates=chosen)
        cut = tuple(sorted(chosen)) if len(chosen) < len(ranked) else None
    say(f"OV eigenvalues and labels of {len(heads)} heads")
    records = []
    with torch.no_grad():
        for l, h in heads:
            s = scores.get(l, h)
            label, key, th = labels[l, h]
            ranked: tuple[KPartner, ...] = ()
            qk_stat, partner = None, None
            if label == "induction" and comp is not None and l > 0:
                ranked = _k_partners(comp, l, h, t.partner_z)
                chosen = _partner(comp, l, h, scores, t)
                partner = next((p for p in ranked if (p.layer, p.head) == chosen), None)
                through = partner or ranked[0]
                term = induction_qk_term(model, l, h, through.layer, through.head)
                qk_stat = eigenvalue_score(term.eigenvalues)
            knocked = knocked_out.get((l, h), ())
            ov = ov_eigenvalues(model, l, h)
            records.append(
                HeadRecord(
                    l,
                    h,
                    label,
                    key,
                    th,
                    s,
                    eigenvalue_score(ov),
                    ranked,
                    qk_stat,
                    ov,
                    knocked,
                    partner,
                )
            )
    return HeadClassification(tuple(records), scores, t, comp, cut)


def _composition(
    model: AttnOnlyTransformer,
    kinds: tuple[str, ...],
    inductions: list[tuple[int, int]],
    n_baseline: int,
    seed: int,
    say: Callable[[str], None],
) -> CompositionScores:
    """`kinds` over every pair, and K-composition into the induction heads (their partners)
    where "k" is not among them."""
    if kinds:
        names = [f"{k.upper()}-" for k in kinds]
        names = " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)
        say(f"{names}composition scores of {model.cfg.n_layers * model.cfg.n_heads} heads")
    if "k" not in kinds:
        n = len(inductions)
        say(f"K-composition into {n} induction head{'' if n == 1 else 's'} (the partners)")
    comp = composition_scores(model, n_baseline, seed, kinds=kinds) if kinds else None
    if "k" in kinds:
        return comp
    partners = composition_scores(model, n_baseline, seed, kinds=("k",), later=inductions)
    return partners if comp is None else dataclasses.replace(comp, k=partners.k)


def _likeliest_partners(
    comp: CompositionScores,
    scores: HeadScores,
    labels: dict[tuple[int, int], tuple[str, str | None, float | None]],
    inductions: list[tuple[int, int]],
) -> list[tuple[int, int]]:
    """Every head below the last induction head's layer, likeliest partner first: the
    previous-token heads (highest score first), then by the best rank any induction head's
    K-composition gives it."""
    last = max(l for l, _ in inductions)
    earlier = [(l0, h0) for l0 in range(last) for h0 in range(comp.k.shape[1])]
    rank = {hd: math.inf for hd in earlier}
    for l, h in inductions:
        order = sorted(
            ((l0, h0) for l0, h0 in earlier if l0 < l),
            key=lambda p: -float(comp.k[p[0], p[1], l, h]),
        )
        for i, hd in enumerate(order):
            rank[hd] = min(rank[hd], i)
    prev = sorted(
        (hd for hd in earlier if labels[hd][0] == "previous_token"),
        key=lambda hd: -scores.get(*hd)["previous_token"],
    )
    return prev + sorted((hd for hd in earlier if hd not in prev), key=lambda hd: rank[hd])


def _partner(
    comp: CompositionScores, layer: int, head: int, scores: HeadScores, t: Thresholds
) -> tuple[int, int] | None:
    """`choose_partner` for the induction head (layer, head): (l0, h0), or None when no
    earlier head is above the baseline."""
    k = comp.k[:layer, :, layer, head]  # [layer, n_heads]
    z = baseline_z(k, comp.baseline_mean["k"], comp.baseline_std["k"])
    l0, h0 = choose_partner(k, z, scores.previous_token[:layer], t.partner_z, t.previous_token)
    return (l0, h0) if float(z[l0, h0]) >= t.partner_z else None


def _k_partners(
    comp: CompositionScores, layer: int, head: int, partner_z: float
) -> tuple[KPartner, ...]:
    """Every head of an earlier layer, ranked by its K-composition into (layer, head), with
    its z-score against the random baseline."""
    k = comp.k[:layer, :, layer, head]  # [layer, n_heads]
    z = baseline_z(k, comp.baseline_mean["k"], comp.baseline_std["k"])
    ranked = [
        KPartner(l0, h0, float(k[l0, h0]), float(z[l0, h0]), float(z[l0, h0]) >= partner_z)
        for l0 in range(layer)
        for h0 in range(comp.k.shape[1])
    ]
    return tuple(sorted(ranked, key=lambda p: -p.score))
