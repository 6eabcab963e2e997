"""The notes sections print beside their numbers: "Not computed" with the recorded reason,
the estimate note of a table read over a sample, and the units notes of a model whose final
norm divides the stream (what a number means in logits)."""

from __future__ import annotations

from qkov.report.escape import esc
from qkov.report.fmt import count, num


def not_computed(model: dict, section: str, default: str = "") -> str:
    reason = (model.get("not_computed") or {}).get(section) or default
    return f'<p class="nc">Not computed{": " + esc(reason) if reason else "."}</p>'


def budget(m: dict) -> dict:
    """What analyze sampled or cut for this model (`qkov.budget.Budget`, "budget" in
    analysis.json; files written before 2026-12-06 call it "scale"); {} when nothing was."""
    return m.get("budget") or m.get("scale") or {}


def partner_head(c: dict) -> list[int]:
    """An induction circuit's partner [layer, head]; files written before 2026-12-07 call it
    "previous_token_head" (it is not always one: `composition.choose_partner`)."""
    return c.get("partner_head") or c["previous_token_head"]


def estimate_note(m: dict, key: str, what: str) -> str:
    """'Estimate: ... a seeded sample of N of V <what>' when analyze sampled (`budget`);
    '' when the table is exact."""
    n = budget(m).get(key)
    if not n:
        return ""
    V = (m.get("config") or {}).get("d_vocab")
    return (
        f'<p class="note estimate">Estimate: the largest entries over a seeded sample of '
        f"{esc(count(n))} of {esc(count(V))} {esc(what)} (the exact table costs d_vocab² "
        "per head at this size).</p>"
    )


def final_scale_note(m: dict, what: str) -> str:
    """For a model with a final norm (`final_scale` in analysis.json): `what` (OV circuit
    values, which read normalised tokens) is written before the norm divides each position
    by its scale, so in logits it is value / scale; '' without a final norm (logits)."""
    fs = m.get("final_scale")
    if not fs:
        return ""
    return (
        f'<p class="note units">{esc(what)} are written before the final norm, which divides '
        f"each position's stream by its scale: median {esc(num(fs['median']))} on the "
        f"evaluation text (10-90%: {esc(num(fs['p10']))}-{esc(num(fs['p90']))}). In logits "
        f"they are about value ÷ {esc(num(fs['median']))}; within this model they rank "
        "the same.</p>"
    )


def direct_path_note(m: dict) -> str:
    """Where the bigram table is not the model's own logits (`embedding_rms` in
    analysis.json: a final norm, and layers or W_pos in the stream): it reads each token
    over its own RMS, the model divides the whole stream; '' where the table is exact."""
    es, fs = m.get("embedding_rms"), m.get("final_scale")
    if not es or not fs:
        return ""
    return (
        '<p class="note units">The table reads each current token alone, over its own RMS '
        f"(W<sub>E</sub>'s rows: median {esc(num(es['median']))}, 10-90% "
        f"{esc(num(es['p10']))}-{esc(num(es['p90']))}); in this model the final norm divides "
        "the whole stream at each position by its scale (median "
        f"{esc(num(fs['median']))} on the evaluation text). The logit a token adds through "
        "the direct path is value × its RMS ÷ the scale: about value × "
        f"{esc(num(es['median']))} ÷ {esc(num(fs['median']))}.</p>"
    )
