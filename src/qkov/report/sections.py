"""The report's sections on the model as a whole: the direct path's bigram table, the
induction circuit, the repeated random tokens test, term importance and training curves.
Each takes plain analysis data and returns an HTML string (the heads' sections are in
qkov.report.heads, the paths' in qkov.report.paths).

A section whose data is absent says "not computed" (with the recorded reason) instead of
drawing anything; nothing here computes: the report only draws data (STYLE.md rule 3)."""

from __future__ import annotations

from qkov.report.cards import evaluation_text
from qkov.report.escape import esc
from qkov.report.fmt import count, num, si
from qkov.report.heads import EXPANDED_HEADS as EXPANDED_HEADS  # re-exported: old import path
from qkov.report.heads import _head_label
from qkov.report.heads import heads_section as heads_section  # re-exported: old import path
from qkov.report.notes import direct_path_note, estimate_note, not_computed, partner_head
from qkov.report.svg import circuit_diagram, hbar_chart, line_chart
from qkov.report.widgets import token_table
from qkov.reprs import largest


def bigram_section(m: dict) -> str:
    rows = m.get("bigrams")
    if not rows:
        return not_computed(m, "bigrams")
    return (
        '<p class="note">Largest entries of the direct path W<sub>E</sub>W<sub>U</sub>: '
        "the logit added to <i>out</i> when the current token is <i>current</i> (each row "
        "centred).</p>"
        + direct_path_note(m)
        + estimate_note(m, "bigram_rows", "current tokens")
        + token_table(rows, [("current", "current"), ("out", "out")], ("logit", "logit"))
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
            tuple(partner_head(c)),
            tuple(c["induction_head"]),
            c.get("k_composition"),
            c.get("previous_token_score"),
            c.get("induction_score"),
            c.get("partner_label") or "not classified",
        )
        + _circuit_note(c, (m.get("config") or {}).get("n_heads", 0))
        for c in circuits
    )


def repetition_section(m: dict) -> str:
    """The peers' repeated random tokens test: each half's loss, the heads that score on it,
    the repeated half's loss split into log-sum-exp less the repeated token's logit, that
    logit and its strongest rival's by writer (a bar each), the loss without each layer's
    direct write, and, where the token counts are known, the loss and the repeat's lift by
    the token's training count."""
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
        out.append(hbar_chart(largest(x["writers"], 8), "the repeated token's logit by writer", ""))
        if x.get("rival_writers"):
            out.append(
                "<h5>its strongest rival's logit by writer (the other token with the highest "
                f"logit at each prediction: {num(x['rival_logit'])} on average)</h5>"
            )
            rival = largest(x["rival_writers"], 8)
            out.append(hbar_chart(rival, "the strongest rival's logit by writer", ""))
        if x.get("loss_without"):
            out.append(
                "<h5>the repeated half's loss with one layer's direct write to the logits "
                "taken out (later layers still read it; patterns and the final norm's scale "
                "frozen)</h5>"
            )
            rows = [("as it is", r["repeated_half_loss"])]
            rows += [(f"without {name}", v) for name, v in x["loss_without"].items()]
            rows.append(("a uniform guess", r["uniform_loss"]))
            out.append(hbar_chart(rows, "repeated-half loss without a layer", " nats", width=620))
    bins = r.get("by_training_count")
    if bins:
        out.append(
            "<h5>the repeated half's loss by how often the token occurred in training "
            "(predictions in brackets)</h5>"
        )
        rows = [(f"{b['label']} ({b['predictions']})", b["loss"]) for b in bins]
        rows.append(("a uniform guess", r["uniform_loss"]))
        out.append(hbar_chart(rows, "repeated-half loss by training count", " nats", width=620))
        out.append(
            "<h5>what the repeat adds to the token's logit: its logit where the repeat "
            "predicts it less where the first half does, by training count</h5>"
        )
        lifts = [(f"{b['label']} ({b['predictions']})", b["lift"]) for b in bins]
        out.append(hbar_chart(lifts, "the repeat's lift by training count", "", width=620))
    return "".join(out)


def _circuit_note(c: dict, n_heads: int) -> str:
    partner = _head_label(*partner_head(c))
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
        if list(c["knockout_head"]) == list(partner_head(c)):
            why = "the causal test of the partner"
        else:  # the earlier head whose knock-out lowers the score most is another head
            why = f"the earlier head whose knock-out lowers it most; not the partner {partner}"
        earlier = c["induction_head"][0] * n_heads
        if c.get("knockouts") is not None and c["knockouts"] < earlier:
            why += (
                f"; of the {c['knockouts']} of {earlier} earlier heads knocked out, over the "
                "budget at this size: the previous-token heads, then those highest by "
                "K-composition"
            )
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
    repeated = {k: v for k, v in series.items() if k.startswith("repetition_") and "loss" in k}
    losses = {k: v for k, v in series.items() if "loss" in k and k not in repeated}
    icl = {k: v for k, v in series.items() if "icl" in k and k not in losses}
    circuit = {k: v for k, v in series.items() if k in CIRCUIT_SERIES}
    scores = {
        k: v
        for k, v in series.items()
        if k not in repeated and k not in losses and k not in icl and k not in circuit
    }
    out = []
    for group, title, y_label in (
        (losses, "training loss", "loss (nats)"),
        (repeated, "loss on repeated random tokens (repetition test)", "loss (nats)"),
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
