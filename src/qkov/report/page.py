"""report.html: one self-contained page drawn from the analysis dict.

Everything is inline (style, script, SVG); fonts are the system's. A Content-Security-
Policy admits only this page's own style and script (by SHA-256 hash) and no network
source at all, so even a string that escaped escaping could neither run nor fetch."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from qkov.report import paths as P
from qkov.report import sections as S
from qkov.report.cards import loss_comparison, model_cards, model_id
from qkov.report.composition import composition_section
from qkov.report.escape import esc, jsonable
from qkov.report.heads import attention_section, heads_section
from qkov.report.schema import SCHEMA_VERSION, validate
from qkov.report.widgets import asset


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def _csp(style: str, script: str) -> str:
    return (
        f"default-src 'none'; style-src {_sha256(style)}; script-src {_sha256(script)}; "
        "img-src data:; base-uri 'none'; form-action 'none'"
    )


def _section(sec_id: str, title: str, body: str) -> str:
    if not body:
        return ""
    return f'<section id="{esc(sec_id)}"><h3>{esc(title)}</h3>{body}</section>'


def model_block(index: int, m: dict) -> str:
    """Everything about one model, in the paper's order."""
    mid = model_id(index)
    view = f"attn-{mid}"
    has_attn = bool((m.get("attention") or {}).get("patterns"))
    parts = [
        _section(f"{mid}-bigrams", "Direct path: bigram table", S.bigram_section(m)),
        _section(f"{mid}-heads", "Heads", heads_section(m, view if has_attn else None, mid)),
        _section(f"{mid}-attention", "Attention on an example text", attention_section(m, view)),
        _section(
            f"{mid}-composition", "Composition (Q / K / V)", composition_section(m, f"comp-{mid}")
        ),
        _section(f"{mid}-induction", "Induction circuit", S.induction_section(m)),
        _section(f"{mid}-repetition", "Repeated random tokens", S.repetition_section(m)),
        _section(f"{mid}-qk-terms", "QK terms: what queries and keys read", P.qk_terms_section(m)),
        _section(f"{mid}-virtual-heads", "Virtual heads' OV circuits", P.virtual_heads_section(m)),
        _section(
            f"{mid}-positional-qk", "Positional QK of layer-0 heads", P.positional_qk_section(m)
        ),
        _section(
            f"{mid}-attribution",
            "Attribution: paths behind each next token",
            P.attribution_section(m, f"attrib-{mid}"),
        ),
        _section(f"{mid}-terms", "Term importance", S.term_importance_section(m)),
        _section(f"{mid}-training", "Training curves", S.training_section(m)),
    ]
    name = m.get("name") or f"model {index}"
    return f'<section class="model" id="{mid}"><h2>Model {esc(name)}</h2>{"".join(parts)}</section>'


def render_report(analysis: dict[str, Any], csp: bool = True) -> str:
    """The full report.html text. `csp=False` drops the Content-Security-Policy (tests use
    it to check that escaping alone keeps hostile tokens inert)."""
    analysis = validate(jsonable(analysis))
    models = analysis["models"]
    style, script = asset("report.css"), asset("report.js")
    nav = "".join(
        f'<a href="#{model_id(i)}">{esc(m.get("name") or i)}</a>' for i, m in enumerate(models)
    )
    meta = (
        f'<meta http-equiv="Content-Security-Policy" content="{esc(_csp(style, script))}">'
        if csp
        else ""
    )
    title = "qkov report: " + ", ".join(str(m.get("name") or i) for i, m in enumerate(models))
    body = (
        '<section id="models"><h2>Models</h2>'
        + model_cards(models)
        + "<h3>Loss side by side</h3>"
        + loss_comparison(models)
        + "</section>"
        + "".join(model_block(i, m) for i, m in enumerate(models))
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'{meta}<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="referrer" content="no-referrer"><link rel="icon" href="data:,">'
        f"<title>{esc(title)}</title><style>{style}</style></head><body>"
        f'<header class="top"><h1>qkov report</h1><p>{esc(analysis.get("generator", "qkov"))}'
        f" \u00b7 analysis schema v{SCHEMA_VERSION} \u00b7 transformers taken "
        "apart into QK and OV circuits (Elhage et al., 2021)</p></header>"
        f'<nav class="toc"><a href="#models">models</a>{nav}</nav><main>{body}</main>'
        f'<div class="qkov-tip" role="tooltip"></div><script>{script}</script></body></html>\n'
    )
