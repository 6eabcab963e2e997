"""The report's sections: each takes plain analysis data and returns an HTML string.

A section whose data is absent says "not computed" (with the recorded reason) instead of
drawing anything; nothing here computes: the report only draws data (STYLE.md rule 3)."""

from __future__ import annotations

import math
from typing import Any

from qkov.names import LABELS
from qkov.report.cards import evaluation_text, token_filter_text
from qkov.report.escape import esc
from qkov.report.fmt import count, num, si
from qkov.report.heatmaps import attention_svg
from qkov.report.paths import split_trigrams_block
from qkov.report.svg import (
    circuit_diagram,
    complex_scatter,
    hbar_chart,
    line_chart,
)
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


def not_computed(model: dict, section: str, default: str = "") -> str:
    reason = (model.get("not_computed") or {}).get(section) or default
    return f'<p class="nc">Not computed{": " + esc(reason) if reason else "."}</p>'


def _head_label(layer: Any, head: Any) -> str:
    return f"L{layer}H{head}"


def scale_note(m: dict, key: str, what: str) -> str:
    """'Estimate: ... a seeded sample of N of V <what>' when analyze sampled (`scale` in
    analysis.json, `qkov.budget.ScalePlan`); '' when the table is exact."""
    n = (m.get("scale") or {}).get(key)
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


def bigram_section(m: dict) -> str:
    rows = m.get("bigrams")
    if not rows:
        return not_computed(m, "bigrams")
    return (
        '<p class="note">Largest entries of the direct path W<sub>E</sub>W<sub>U</sub>: '
        "the logit added to <i>out</i> when the current token is <i>current</i> (each row "
        "centred).</p>"
        + direct_path_note(m)
        + scale_note(m, "bigram_rows", "current tokens")
        + token_table(rows, [("current", "current"), ("out", "out")], ("logit", "logit"))
    )


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
        f"<figure>{svg}<figcaption>attention on {esc(att.get('text') or 'the sample text')} "
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
            + scale_note(m, "trigram_sources", "source tokens")
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
    cols = (m.get("scale") or {}).get("copying_columns")
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
    note = f'<p class="note">Tokens of {esc(att.get("text") or "the sample text")}.</p>'
    return (
        note
        + data_block(view_id, attention_data(tokens, pats))
        + attention_strip(view_id, tokens, pats)
    )


def induction_section(m: dict) -> str:
    circuits = m.get("induction_circuits")
    if (m.get("config") or {}).get("n_layers", 0) < 2:
        return ""  # an induction circuit needs two layers
    if circuits is None:
        return not_computed(m, "induction_circuits")
    if not circuits:
        return '<p class="note">No induction head found (no head passed the thresholds).</p>'
    return "".join(
        circuit_diagram(
            tuple(c["previous_token_head"]),
            tuple(c["induction_head"]),
            c.get("k_composition"),
            c.get("previous_token_score"),
            c.get("induction_score"),
            c.get("partner_label") or "not classified",
        )
        + _circuit_note(c)
        for c in circuits
    )


def repetition_section(m: dict) -> str:
    """The peers' repeated random tokens test: each half's loss, the heads that score on it,
    and the repeated half's loss split into log-sum-exp less the repeated token's logit, that
    logit by writer (a bar each)."""
    r = m.get("repetition")
    if (m.get("config") or {}).get("n_layers", 0) < 1:
        return ""
    if not r:
        return not_computed(m, "repetition")
    n_heads = len(r["induction_scores"][0]) if r["induction_scores"] else 0
    flat = [
        (v, l, h)
        for l, row in enumerate(r["induction_scores"])
        for h, v in enumerate(row)
        if v is not None
    ]
    top = sorted(flat, reverse=True)[: min(5, len(flat))]
    intro = (
        f"{r['batch']} sequences of random tokens, a block of {r['half_len']} repeated once "
        f"(seed {r['seed']}; the test TransformerLens and ARENA report). Loss on the first "
        f"half {num(r['first_half_loss'])} nats, on the repeated half "
        f"{num(r['repeated_half_loss'])} ({r['repeated_fraction']:.0%} of the uniform "
        f"{num(r['uniform_loss'])}). Highest induction scores on it (attention from each "
        "repeated token to the token after its first occurrence): "
        + ", ".join(f"{_head_label(l, h)} {num(v)}" for v, l, h in top)
        + "."
    )
    out = [f'<p class="note">{esc(intro)}</p>']
    x = r.get("repeated_token_logit")
    if x:
        writers = sorted(x["writers"].items(), key=lambda kv: -abs(kv[1]))
        shown = writers[:8]
        if len(writers) > len(shown):
            rest = sum(v for _, v in writers[len(shown) :])
            shown.append((f"the other {len(writers) - len(shown)}", rest))
        split = (
            f"The repeated half's loss, {num(x['log_sum_exp'] - x['logit'])} nats = the "
            f"log-sum-exp of the logits {num(x['log_sum_exp'])} (a uniform guess: "
            f"{num(r['uniform_loss'])}) less the repeated token's logit {num(x['logit'])}, "
            "both counted from the mean logit, means over the repeated half's predictions. "
            "What writes that logit into the residual stream, exactly (the final norm's "
            f"scale frozen; {n_heads} heads a layer):"
        )
        out.append(f'<p class="note">{esc(split)}</p>')
        parts = [
            ("log-sum-exp of the logits", x["log_sum_exp"]),
            ("that of a uniform guess", r["uniform_loss"]),
            ("the repeated token's logit", x["logit"]),
            ("the loss: their difference", x["log_sum_exp"] - x["logit"]),
        ]
        out.append("<h5>the repeated half's loss (logits counted from their mean)</h5>")
        out.append(hbar_chart(parts, "the repeated half's loss", " nats", width=620))
        out.append("<h5>the repeated token's logit by writer</h5>")
        out.append(hbar_chart(shown, "the repeated token's logit by writer", ""))
    return "".join(out)


def _circuit_note(c: dict) -> str:
    partner = _head_label(*c["previous_token_head"])
    parts = ["previous_token and induction scores on the random-token probe"]
    if c.get("k_composition_z") is not None:
        parts.append(f"K-composition z-score against random heads {num(c['k_composition_z'])}")
    if c.get("qk_term_eigenvalue_score") is not None:
        parts.append(
            f"\u03a3\u03bb/\u03a3|\u03bb| of the QK term through {partner}: "
            f"{num(c['qk_term_eigenvalue_score'], signed=True)} (positive: token matching)"
        )
    if c.get("knockout_head") and c.get("knockout_drop") is not None:
        knocked = _head_label(*c["knockout_head"])
        if list(c["knockout_head"]) == list(c["previous_token_head"]):
            why = "the causal test of the partner"
        else:  # the earlier head whose knock-out lowers the score most is another head
            why = f"the earlier head whose knock-out lowers it most; not the partner {partner}"
        parts.append(
            f"zeroing {knocked}'s output lowers the induction score by "
            f"{num(c['knockout_drop'])} ({why})"
        )
    return f'<p class="note circuit">{esc("; ".join(parts))}</p>'


ORDER_NOTE = (
    "An order counts the heads on a path. The token (and position) embedding, the biases "
    "and each MLP's output start paths: what they write straight to the logits is order 0, "
    "a head reading them makes an order-1 path, and so on. An MLP knock-out sets its output "
    "to zero; later layers see the change."
)


def term_importance_section(m: dict) -> str:
    ti = m.get("term_importance")
    cfg = m.get("config") or {}
    if cfg.get("n_layers", 0) == 0:
        return ""
    if not ti or not ti.get("terms"):
        return not_computed(m, "term_importance")
    terms = ti["terms"]
    orders = [
        (str(t.get("term")), t.get("loss_increase")) for t in terms if t.get("kind") == "order"
    ]
    knocked = [
        (str(t.get("term")), t.get("loss_increase")) for t in terms if t.get("kind") != "order"
    ]
    has_mlp = any(t.get("kind") == "mlp" for t in terms)
    info = (
        f"Clean loss {num(ti.get('clean_loss'))} nats on {count(ti.get('n_tokens'))} predicted "
        f"tokens of the evaluation set ({evaluation_text(m)}); {ti.get('mode', 'zero')} ablation."
    )
    out = [f'<p class="note">{esc(info)}</p>']
    if has_mlp or cfg.get("d_mlp") or cfg.get("bias"):
        out.append(f'<p class="note order-meaning">{esc(ORDER_NOTE)}</p>')
    if orders:
        out.append("<h5>all terms of one order ablated (patterns frozen)</h5>")
        out.append(hbar_chart(orders, "loss increase per path order", " nats"))
    reason = (m.get("not_computed") or {}).get("head_knockouts")
    if reason:
        out.append(f'<p class="note estimate">Per-head knock-outs not computed: {esc(reason)}</p>')
    if knocked:
        has_head = any(t.get("kind") == "head" for t in terms)
        what = {(True, True): "head or MLP", (False, True): "MLP"}.get((has_head, has_mlp), "head")
        out.append(f"<h5>one {what} knocked out</h5>")
        out.append(hbar_chart(knocked, f"loss increase per {what}", " nats"))
    return "".join(out)


def _phase_band(m: dict) -> tuple[float, float] | None:
    pc = m.get("phase_change")
    try:
        start, end = (float(t) for t in pc["tokens"])
    except (TypeError, KeyError, ValueError):
        return None
    return start, end


CIRCUIT_SERIES = ("probe_k_composition", "probe_qk_eigenvalue", "probe_ov_eigenvalue")


def training_section(m: dict) -> str:
    """Training curves against tokens seen; the phase change is shaded and captioned only
    where the analysis found one (MODEL.phase_change)."""
    tr = m.get("training") or {}
    series = tr.get("series") or {}
    if not series:
        return not_computed(m, "training", "no metrics.jsonl next to the checkpoint")
    band = _phase_band(m)
    losses = {k: v for k, v in series.items() if "loss" in k}
    icl = {k: v for k, v in series.items() if "icl" in k and k not in losses}
    circuit = {k: v for k, v in series.items() if k in CIRCUIT_SERIES}
    scores = {
        k: v for k, v in series.items() if k not in losses and k not in icl and k not in circuit
    }
    out = []
    for group, title, y_label in (
        (losses, "training loss", "loss (nats)"),
        (scores, "head scores over training (random-token probe)", "score"),
        (icl, "ICL score over training (random-token probe)", "nats"),
        (circuit, "the induction circuit forming (weights)", "statistic"),
    ):
        if group:
            chart = line_chart(group, title, "tokens seen", y_label, width=420, band=band)
            out.append(f"<figure>{chart}<figcaption>{esc(title)}</figcaption></figure>")
    notes = []
    if "val_loss" in losses:
        last = tr.get("last_val_loss") or {}
        at = f" (last {num(last['value'])} at {si(last.get('tokens'))} tokens)" if last else ""
        notes.append(
            f"val_loss is training's own held-out estimate{at}; the model card's loss is "
            "measured on the evaluation set."
        )
    heads = tr.get("circuit_heads") or {}
    if circuit and heads.get("induction_head"):
        notes.append(
            "The induction circuit, read from the weights at each probe: K-composition of the "
            "best induction head's keys with its partner's output, Σλ/Σ|λ| of the induction QK "
            "term through the partner (token matching), and of the induction head's OV circuit "
            f"(copying). At the last probe the heads are {heads['induction_head']} and its "
            f"partner {heads.get('partner_head')}."
        )
    if band:
        notes.append(
            f"Phase change between {si(band[0])} and {si(band[1])} tokens (shaded): the probe "
            "induction score rises from below 0.1 to half its final value while the probe ICL "
            "score falls."
        )
    note = "".join(f'<p class="note">{esc(n)}</p>' for n in notes)
    phase = ' class="phase-change"' if band else ""
    return f'<div class="plots"{phase}>{"".join(out)}</div>{note}'
