"""The report's sections on heads: the head table and one card per head (label, scores,
OV/QK eigenvalues, skip-trigrams, attention), and every head's attention on the example text.

Each takes plain analysis data and returns an HTML string; nothing here computes."""

from __future__ import annotations

import math
from typing import Any

from qkov.names import LABELS
from qkov.report.cards import token_filter_text
from qkov.report.escape import esc
from qkov.report.fmt import count, num
from qkov.report.heatmaps import attention_svg
from qkov.report.notes import budget, estimate_note, final_scale_note, not_computed
from qkov.report.paths import split_trigrams_block
from qkov.report.svg import complex_scatter
from qkov.report.widgets import (
    GROUPS,
    SAME_AS,
    attention_data,
    attention_strip,
    data_block,
    head_table,
    same_value,
    token_table,
)

MAX_ATTN_TOKENS = 64


def _head_label(layer: Any, head: Any) -> str:
    return f"L{layer}H{head}"


def _scores_line(scores: dict | None, key: str) -> str:
    """One group of a head's scores; a score equal to its twin (prefix_matching and
    induction on the probe) is shown once, as in the head table."""
    if not scores:
        return ""
    drop, twin = SAME_AS[key]
    if same_value(scores.get(drop), scores.get(twin)):
        scores = {k: v for k, v in scores.items() if k != drop}
    where = dict(GROUPS)[key]
    text = ", ".join(f"{k} {num(v)}" for k, v in scores.items())
    return f'<p class="note scores">{esc(where)}: {esc(text)}</p>'


def _head_attention(
    m: dict, layer: Any, head: Any, view_id: str | None, dense: bool = False
) -> str:
    att = m.get("attention") or {}
    try:
        pat = att["patterns"][int(layer)][int(head)] if view_id else None
    except (KeyError, IndexError, TypeError, ValueError):
        pat = None
    if pat is None:
        return ""
    name = _head_label(layer, head)
    tokens = att["tokens"][:MAX_ATTN_TOKENS]
    svg = attention_svg(tokens, pat, view_id, f"{layer}.{head}", f"{name} attention", raster=dense)
    return (
        f"<figure>{svg}<figcaption>attention on {esc(att.get('text') or 'the example text')} "
        "(rows: destination, columns: source; hover for tokens)</figcaption></figure>"
    )


def head_card(m: dict, h: dict, view_id: str | None, prefix: str, dense: bool = False) -> str:
    """One head: label, scores (probe and text), OV/QK eigenvalues, trigrams, attention.
    `dense` (many heads): the attention map is one image and the eigenvalues dots without a
    tooltip each (the values are in analysis.json)."""
    layer, head = h.get("layer"), h.get("head")
    name = _head_label(layer, head)
    label = h.get("label")
    badge = f'<span class="badge {esc(label)}">{esc(label)}</span>' if label else ""
    why = ""
    if h.get("decided_by"):
        why = (
            f'<p class="note">label decided by {esc(h["decided_by"])} \u2265 '
            f"{esc(num(h.get('threshold')))} on the probe</p>"
        )
    plots = []
    for key, title in (("ov_eigenvalues", "OV"), ("qk_eigenvalues", "QK")):
        if h.get(key) is not None:
            plots.append(
                f"<figure>{complex_scatter(h[key], f'{name} {title}', compact=dense)}"
                f"<figcaption>{title} eigenvalues</figcaption></figure>"
            )
    stat = ""
    if h.get("ov_eigenvalue_score") is not None:
        stat = (
            "<p>OV eigenvalue score \u03a3\u03bb/\u03a3|\u03bb|: "
            f'<b class="ov-score">{esc(num(h["ov_eigenvalue_score"], signed=True))}</b></p>'
        )
    trig = ""
    if h.get("skip_trigrams"):
        trig = (
            f"<h5>top skip-trigrams ({esc(token_filter_text(m.get('token_filter')))})</h5>"
            + estimate_note(m, "trigram_sources", "source tokens")
            + token_table(
                h["skip_trigrams"][:8],
                [
                    ("source", "source"),
                    ("destination", "\u2026 destination"),
                    ("out", "\u2192 out"),
                ],
                ("score", "score"),
            )
        )
    return (
        f'<div class="card head-card" id="{esc(prefix)}-{esc(name)}">'
        f"<h4>{esc(name)}{badge}</h4>{why}"
        f"{_scores_line(h.get('scores'), 'scores')}"
        f"{_scores_line(h.get('text_scores'), 'text_scores')}"
        f'{stat}<div class="plots">{"".join(plots)}</div>'
        f"{_head_attention(m, layer, head, view_id, dense)}{trig}"
        f"{split_trigrams_block(m, h, token_table, token_filter_text(m.get('token_filter')))}</div>"
    )


def measured_on_note(m: dict) -> str:
    """What the head table's two groups of scores rest on (`head_scores_measured_on`): the
    probe's size and seed, and how many of the evaluation set's sequences the text scores
    read (`qkov heads` scores every one, so a reader comparing the two must see this)."""
    on = m.get("head_scores_measured_on") or {}
    parts = []
    probe = on.get("probe")
    if probe:
        parts.append(
            f"The random-token probe: {count(probe.get('n_sequences'))} sequences of "
            f"{count(probe.get('seq_len'))} random tokens ending in a repeated block (seed "
            f"{esc(probe.get('seed'))})."
        )
    text = on.get("text")
    if text:
        n, of = text.get("n_sequences"), text.get("of_sequences")
        which = f"its {count(n)} sequences"
        if n != of:
            which = f"the first {count(n)} of its {count(of)} sequences"
        parts.append(
            f"The evaluation text: {which} ({count(n)} × {count(text.get('seq_len'))} tokens)."
        )
    return f'<p class="note">{" ".join(parts)}</p>' if parts else ""


def heads_section(m: dict, view_id: str | None, prefix: str) -> str:
    heads = m.get("heads")
    if not heads:
        if (m.get("config") or {}).get("n_layers") == 0:
            return (
                '<p class="note">A 0-layer model has no heads: its logits are the bigram table.</p>'
            )
        return not_computed(m, "heads")
    cols = budget(m).get("copying_columns")
    copy_note = (
        f'<p class="note estimate">Estimate: each copying score ranks the source token among '
        f"a seeded sample of {esc(count(cols))} of {esc(count(m['config']['d_vocab']))} logits "
        "(scaled to the whole vocabulary).</p>"
        if cols and m.get("config")
        else ""
    )
    units = final_scale_note(m, "Skip-trigram scores (sigmoid(attention) × logit boost)")
    copy_note = measured_on_note(m) + copy_note
    if len(heads) <= EXPANDED_HEADS:
        cards = "".join(head_card(m, h, view_id, prefix) for h in heads)
        return head_table(heads) + copy_note + units + f'<div class="cards">{cards}</div>'
    # Many heads (GPT-2 small has 144): by role, then by the score that decided the role;
    # the first EXPANDED_HEADS cards open, the rest folded.
    heads = sorted(heads, key=_role_and_score)
    top = "".join(head_card(m, h, view_id, prefix, True) for h in heads[:EXPANDED_HEADS])
    rest = "".join(head_card(m, h, view_id, prefix, True) for h in heads[EXPANDED_HEADS:])
    return (
        head_table(heads, tall=True)
        + copy_note
        + units
        + f'<p class="note">{len(heads)} heads, sorted by label and by the score that decided '
        f"it; the top {EXPANDED_HEADS} are shown, the rest folded below. At this size each "
        "attention map is one image (hover a cell for its tokens and weight) and the "
        "eigenvalues are dots without a tooltip each: every eigenvalue is in analysis.json "
        "(the head's ov_eigenvalues and qk_eigenvalues).</p>"
        + f'<div class="cards">{top}</div>'
        + f"<details><summary>the other {len(heads) - EXPANDED_HEADS} heads</summary>"
        + f'<div class="cards">{rest}</div></details>'
    )


EXPANDED_HEADS = 16  # more heads than this: sorted, and the rest folded


def _role_and_score(h: dict) -> tuple[int, float]:
    """Sort key: labels in LABELS order ("other" last), then the deciding score, highest first."""
    label = h.get("label") or "other"
    rank = LABELS.index(label) if label in LABELS else len(LABELS)
    score = (h.get("scores") or {}).get(h.get("decided_by") or label)
    try:
        value = float(score)
    except (TypeError, ValueError):
        value = float("nan")
    return rank, -value if math.isfinite(value) else math.inf


def attention_section(m: dict, view_id: str) -> str:
    att = m.get("attention")
    if not att or not att.get("tokens") or not att.get("patterns"):
        if (m.get("config") or {}).get("n_layers") == 0:
            return ""
        return not_computed(m, "attention")
    tokens = att["tokens"][:MAX_ATTN_TOKENS]
    n = len(tokens)
    # Causal rows only (destination i reads sources 0..i): the page never looks further.
    pats = {
        f"{l}.{h}": [row[: i + 1] for i, row in enumerate(p[:n])]
        for l, heads in enumerate(att["patterns"])
        for h, p in enumerate(heads)
    }
    note = f'<p class="note">Tokens of {esc(att.get("text") or "the example text")}.</p>'
    return (
        note
        + data_block(view_id, attention_data(tokens, pats))
        + attention_strip(view_id, tokens, pats)
    )
