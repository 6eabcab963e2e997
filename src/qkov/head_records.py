"""The HEAD and induction-circuit records of analysis.json (qkov.report.schema): each head's
label and scores from classify_heads, with its spectra and skip-trigram tables."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch import Tensor

from qkov.budget import Budget
from qkov.classification import HeadClassification, HeadRecord
from qkov.eigenvalues import qk_eigenvalues
from qkov.model import AttnOnlyTransformer
from qkov.split_tokens import split_token_trigrams
from qkov.trigrams import SkipTrigramTable, head_factors, skip_trigrams


def head_record(
    model: AttnOnlyTransformer,
    r: HeadRecord,
    text_scores: dict[str, Any] | None,
    trig: SkipTrigramTable,
    n_trigrams: int,
    min_count: int | None,
    candidates: Tensor,
) -> dict[str, Any]:
    """A HEAD record: label and scores from classify_heads, spectra, the head's skip-trigrams
    `trig` (`head_trigrams`) and its token-split trigrams."""
    split = split_token_trigrams(
        model, r.layer, r.head, k=n_trigrams, min_count=min_count, candidates=candidates
    )
    return {
        "layer": r.layer,
        "head": r.head,
        "label": r.label,
        "decided_by": r.decided_by,
        "threshold": r.threshold,
        "scores": r.to_dict()["scores"],
        "text_scores": (
            {k: text_scores[k][r.layer][r.head] for k in r.scores} if text_scores else None
        ),
        "ov_eigenvalue_score": r.to_dict()["ov_eigenvalue_score"],
        "ov_eigenvalues": r.to_dict()["ov_eigenvalues"],
        "qk_eigenvalues": _complex_pairs(qk_eigenvalues(model, r.layer, r.head)),
        "skip_trigrams": [
            {
                "source": t.source_str,
                "destination": t.destination_str,
                "out": t.out_str,
                "score": t.score,
            }
            for t in trig
        ],
        "split_token_trigrams": {
            "n_candidates": split.n_candidates,
            "n_favoured": split.n_favoured,
            "trigrams": [
                {
                    "source": t.source_str,
                    "destination": t.destination_str,
                    "out": t.out_str,
                    "score": t.score,
                }
                for t in split.trigrams
            ],
        },
    }


def head_trigrams(
    model: AttnOnlyTransformer,
    records: list[HeadRecord],
    n_trigrams: int,
    min_count: int | None,
    plan: Budget,
    seed: int,
) -> Iterator[SkipTrigramTable]:
    """The skip-trigrams of each head of `records`, in order (over the plan's sample of
    sources at scale; the heads of a layer formed together, `head_factors`)."""
    for layer, head, factors in head_factors(model, [(r.layer, r.head) for r in records]):
        yield skip_trigrams(
            model,
            layer,
            head,
            k=n_trigrams,
            per_source=2,
            min_count=min_count,
            n_sources=plan.trigram_sources,
            seed=seed,
            factors=factors,
        )


def induction_circuits(cls: HeadClassification) -> list[dict[str, Any]]:
    """Each induction head and its partner, "partner_head" (`HeadRecord.partner`, chosen by
    `composition.choose_partner`; the earlier head its key reads most where no head is above
    the random baseline)."""
    out = []
    for r in cls.with_label("induction"):
        if not r.k_composition:
            continue
        top = r.partner or r.k_composition[0]
        partner = cls.record(top.layer, top.head)
        out.append(
            {
                "partner_head": [top.layer, top.head],
                "induction_head": [r.layer, r.head],
                "k_composition": top.score,
                "k_composition_z": top.z,
                "partner_label": partner.label,
                "previous_token_score": partner.scores.get("previous_token"),
                "induction_score": r.scores.get("induction"),
                "qk_term_eigenvalue_score": r.qk_term_eigenvalue_score,
                "knockout_head": [r.knockout[0].layer, r.knockout[0].head] if r.knockout else None,
                "knockout_drop": r.knockout[0].drop if r.knockout else None,
                "knockouts": len(r.knockout),
            }
        )
    return out


def _complex_pairs(z: Tensor) -> list[list[float]]:
    return [[float(v.real), float(v.imag)] for v in z.reshape(-1)]
