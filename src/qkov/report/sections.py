"""The report's sections: each takes plain analysis data and returns an HTML string.

A section whose data is absent says "not computed" (with the recorded reason) instead of
drawing anything; nothing here computes: the report only draws data (STYLE.md rule 3)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from qkov.report.escape import esc
from qkov.report.svg import (
    attention_svg,
    circuit_diagram,
    complex_scatter,
    hbar_chart,
    heatmap,
    line_chart,
    num,
)
from qkov.report.widgets import attention_data, attention_strip, data_block, head_table, token_table

MAX_ATTN_TOKENS = 64


def not_computed(model: dict, section: str, default: str = "") -> str:
    reason = (model.get("not_computed") or {}).get(section) or default
    return f'<p class="nc">Not computed{": " + esc(reason) if reason else "."}</p>'


def model_id(index: int) -> str:
    return f"m{index}"


def _head_label(layer: Any, head: Any) -> str:
    return f"L{layer}H{head}"


def model_cards(models: Sequence[dict]) -> str:
    """One card per model: its config and where it came from."""
    cards = []
    for i, m in enumerate(models):
        cfg = m.get("config") or {}
        rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in cfg.items())
        extra = ""
        if m.get("n_params") is not None:
            n_params = f"{int(m['n_params']):,}"
            extra += f"<tr><th>parameters</th><td>{esc(n_params)}</td></tr>"
        tokz = m.get("tokenizer") or {}
        if tokz.get("vocab_size") is not None:
            extra += f"<tr><th>tokenizer vocab</th><td>{esc(tokz['vocab_size'])}</td></tr>"
        if m.get("source"):
            extra += f"<tr><th>checkpoint</th><td><code>{esc(m['source'])}</code></td></tr>"
        loss = m.get("loss") or {}
        if loss.get("value") is not None:
            extra += f"<tr><th>loss</th><td>{esc(num(loss['value'], 4))} nats/token</td></tr>"
        val = m.get("val_loss") or {}
        if val.get("value") is not None:
            extra += (
                f"<tr><th>val loss (training)</th><td>{esc(num(val['value'], 4))} at step "
                f"{esc(val.get('step'))}</td></tr>"
            )
        note = ""
        if cfg.get("normalization") == "rms":
            note = (
                '<p class="note">RMS-normalised: token circuits read each W<sub>E</sub> row '
                "over its RMS, as layer 0 does; the per-position scales of later layers and "
                "of the unembedding are frozen in the path terms and left out of the token "
                "circuits (a positive factor per position).</p>"
            )
        cards.append(
            f'<div class="card model-card"><h3><a href="#{model_id(i)}">'
            f"{esc(m.get('name') or f'model {i}')}</a></h3>"
            f"<table>{rows}{extra}</table>{note}</div>"
        )
    return f'<div class="cards">{"".join(cards)}</div>'


def loss_comparison(models: Sequence[dict]) -> str:
    """Loss of the models side by side (0 > 1 > 2 layers is the paper's story)."""
    items = [
        (str(m.get("name") or i), (m.get("loss") or {}).get("value")) for i, m in enumerate(models)
    ]
    if all(v is None for _, v in items):
        return '<p class="nc">Not computed: no model has an evaluation loss.</p>'
    sources = sorted(
        {
            str((m.get("loss") or {}).get("source"))
            for m in models
            if (m.get("loss") or {}).get("source")
        }
    )
    note = f'<p class="note">Measured on: {esc("; ".join(sources))}.</p>' if sources else ""
    return hbar_chart(items, "loss per model (nats per token)", " nats") + note


def bigram_section(m: dict) -> str:
    rows = m.get("bigrams")
    if not rows:
        return not_computed(m, "bigrams")
    return (
        '<p class="note">Largest entries of the direct path W<sub>E</sub>W<sub>U</sub>: '
        "the logit added to <i>out</i> when the current token is <i>source</i>.</p>"
        + token_table(rows, [("source", "source"), ("out", "out")], ("logit", "logit"))
    )


def head_card(m: dict, h: dict, view_id: str | None, prefix: str) -> str:
    """One head: role, scores, OV/QK eigenvalues, copying statistic, trigrams, attention."""
    layer, head = h.get("layer"), h.get("head")
    name = _head_label(layer, head)
    role = h.get("role")
    badge = f'<span class="badge {esc(role)}">{esc(role.replace("_", " "))}</span>' if role else ""
    plots = []
    for key, title in (("ov_eigenvalues", "OV"), ("qk_eigenvalues", "QK")):
        if h.get(key) is not None:
            plots.append(
                f"<figure>{complex_scatter(h[key], f'{name} {title}')}"
                f"<figcaption>{title} eigenvalues</figcaption></figure>"
            )
    copy = h.get("copying")
    stat = (
        (f"<p>copying statistic \u03a3\u03bb/\u03a3|\u03bb| of OV: <b>{esc(num(copy))}</b></p>")
        if copy is not None
        else ""
    )
    scores = h.get("scores") or {}
    score_txt = ", ".join(f"{esc(k.replace('_', ' '))} {esc(num(v))}" for k, v in scores.items())
    trig = ""
    if h.get("skip_trigrams"):
        trig = "<h5>top skip-trigrams</h5>" + token_table(
            h["skip_trigrams"][:8],
            [("source", "source"), ("destination", "\u2026 destination"), ("out", "\u2192 out")],
            ("score", "score"),
        )
    attn = ""
    att = m.get("attention") or {}
    try:
        pat = att["patterns"][int(layer)][int(head)] if view_id else None
    except (KeyError, IndexError, TypeError, ValueError):
        pat = None
    if pat is not None:
        tokens = att["tokens"][:MAX_ATTN_TOKENS]
        attn = (
            f"<figure>{attention_svg(tokens, pat, view_id, f'{layer}.{head}', f'{name} attention')}"
            "<figcaption>attention on the sample text (rows: destination, columns: "
            "source; hover for tokens)</figcaption></figure>"
        )
    return (
        f'<div class="card head-card" id="{esc(prefix)}-{esc(name)}">'
        f"<h4>{esc(name)}{badge}</h4>"
        f'<p class="note">{score_txt}</p>{stat}<div class="plots">{"".join(plots)}</div>'
        f"{attn}{trig}</div>"
    )


def heads_section(m: dict, view_id: str | None, prefix: str) -> str:
    heads = m.get("heads")
    if not heads:
        if (m.get("config") or {}).get("n_layers") == 0:
            return (
                '<p class="note">A 0-layer model has no heads: its logits are the bigram table.</p>'
            )
        return not_computed(m, "heads")
    cards = "".join(head_card(m, h, view_id, prefix) for h in heads)
    return head_table(heads) + f'<div class="cards">{cards}</div>'


def attention_section(m: dict, view_id: str) -> str:
    att = m.get("attention")
    if not att or not att.get("tokens") or not att.get("patterns"):
        if (m.get("config") or {}).get("n_layers") == 0:
            return ""
        return not_computed(m, "attention")
    tokens = att["tokens"][:MAX_ATTN_TOKENS]
    n = len(tokens)
    pats = {
        f"{l}.{h}": [row[:n] for row in p[:n]]
        for l, heads in enumerate(att["patterns"])
        for h, p in enumerate(heads)
    }
    return data_block(view_id, attention_data(tokens, pats)) + attention_strip(
        view_id, tokens, pats
    )


def composition_section(m: dict) -> str:
    comp = m.get("composition")
    n_layers = (m.get("config") or {}).get("n_layers", 0)
    if n_layers is not None and n_layers < 2:
        return ""  # nothing composes in fewer than two layers
    if not comp:
        return not_computed(m, "composition")
    base = comp.get("baseline") or {}
    finite = [
        v for kind in "qkv" for v in _flat(comp.get(kind)) if v is not None and math.isfinite(v)
    ]
    vmax = max(finite, default=1.0)
    figs = []
    n_layers = len(comp.get("q") or comp.get("k") or comp.get("v") or [])
    for kind in "qkv":
        grid = comp.get(kind)  # [l_earlier][h_earlier][l_later][h_later]
        if grid is None:
            continue
        b = base.get(kind)
        vmin = b if isinstance(b, (int, float)) else 0.0
        for l1 in range(1, n_layers):
            n1 = len(grid[0][0][l1])
            rows = [_head_label(l1, h) for h in range(n1)]
            cols = [_head_label(l0, h) for l0 in range(l1) for h in range(len(grid[l0]))]
            vals = [
                [grid[l0][h0][l1][h1] for l0 in range(l1) for h0 in range(len(grid[l0]))]
                for h1 in range(n1)
            ]
            plot = heatmap(
                vals, rows, cols, f"{kind.upper()}-composition", vmin, vmax, hi="#a63603"
            )
            spread = _baseline(b, (comp.get("baseline_std") or {}).get(kind))
            figs.append(
                f"<figure>{plot}<figcaption>{kind.upper()}-composition into layer {l1}; "
                f"baseline (random heads) {esc(spread)}"
                "</figcaption></figure>"
            )
    return (
        '<p class="note">Rows: later head (reads), columns: earlier head (writes). '
        "Score \u2016W<sub>A</sub>W<sub>B</sub>\u2016<sub>F</sub> / "
        "(\u2016W<sub>A</sub>\u2016<sub>F</sub>\u2016W<sub>B</sub>\u2016<sub>F</sub>); "
        "white = at or below the baseline.</p>" + f'<div class="plots">{"".join(figs)}</div>'
    )


def _baseline(mean: Any, std: Any) -> str:
    return num(mean) + (f" \u00b1 {num(std)}" if isinstance(std, (int, float)) else "")


def _flat(x: Any) -> list:
    if isinstance(x, list):
        return [v for item in x for v in _flat(item)]
    return [x] if isinstance(x, (int, float)) else []


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
            f"{c['partner_role'].replace('_', '-')} head"
            if c.get("partner_role")
            else "previous-token head",
        )
        + _circuit_note(c)
        for c in circuits
    )


def _circuit_note(c: dict) -> str:
    parts = []
    if c.get("k_composition_z") is not None:
        parts.append(f"K-composition z-score against random heads {num(c['k_composition_z'])}")
    if c.get("qk_term_eigenvalue_score") is not None:
        parts.append(
            "\u03a3\u03bb/\u03a3|\u03bb| of the QK term through the partner "
            f"{num(c['qk_term_eigenvalue_score'])} (positive: token matching)"
        )
    return f'<p class="note">{esc("; ".join(parts))}</p>' if parts else ""


def term_importance_section(m: dict) -> str:
    ti = m.get("term_importance")
    if (m.get("config") or {}).get("n_layers", 0) == 0:
        return ""
    if not ti or not ti.get("terms"):
        return not_computed(m, "term_importance")
    terms = ti["terms"]
    orders = [
        (str(t.get("term")), t.get("loss_increase")) for t in terms if t.get("kind") == "order"
    ]
    heads = [
        (str(t.get("term")), t.get("loss_increase")) for t in terms if t.get("kind") != "order"
    ]
    info = (
        f"Clean loss {num(ti.get('clean_loss'), 4)} nats on {ti.get('n_tokens', '?')} predicted "
        f"tokens ({ti.get('source', 'evaluation tokens')}); {ti.get('mode', 'zero')} ablation."
    )
    out = [f'<p class="note">{esc(info)}</p>']
    if orders:
        out.append("<h5>all terms of one order ablated (patterns frozen)</h5>")
        out.append(hbar_chart(orders, "loss increase per path order", " nats"))
    if heads:
        out.append("<h5>one head knocked out</h5>")
        out.append(hbar_chart(heads, "loss increase per head", " nats"))
    return "".join(out)


def training_section(m: dict) -> str:
    tr = m.get("training") or {}
    series = tr.get("series") or {}
    if not series:
        return not_computed(m, "training", "no metrics.jsonl next to the checkpoint")
    losses = {k: v for k, v in series.items() if "loss" in k}
    icl = {k: v for k, v in series.items() if k.startswith("icl")}
    scores = {k: v for k, v in series.items() if k not in losses and k not in icl}
    out = []
    if losses:
        out.append(line_chart(losses, "training loss", "step", "loss (nats)", width=420))
    if scores:
        out.append(line_chart(scores, "head scores over training", "step", "score", width=420))
    if icl:
        out.append(line_chart(icl, "ICL score over training", "step", "nats", width=420))
    final = m.get("icl_score")
    note = ""
    if final is not None:
        note = f'<p class="note">ICL score of the final model: {esc(num(final))} nats</p>'

    return (
        '<p class="note">The induction bump: induction score rises and the ICL score falls '
        "together (the phase change).</p>" + f'<div class="plots">{"".join(out)}</div>' + note
    )
