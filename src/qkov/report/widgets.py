"""Small HTML views usable alone (Jupyter `_repr_html_`) and inside report.html.

Other modules' records call these from `_repr_html_`, e.g.

    def _repr_html_(self) -> str:
        from qkov.report import head_table_html
        return head_table_html(self.to_dict()["heads"])

Each `*_html` function returns a self-contained fragment (scoped style, data, script),
escapes every token, and never refers to a network host."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from importlib.resources import files
from typing import Any

from qkov.report.escape import esc, jsonable, script_json, tok, visible_token
from qkov.report.svg import attention_svg, complex_scatter, num

_ids = itertools.count()

# Scoped style for notebook fragments (the full page uses assets/report.css).
FRAGMENT_CSS = """
.qkov table { border-collapse: collapse; font-size: 13px; }
.qkov th, .qkov td { padding: 2px 8px; border-bottom: 1px solid #d6dbe1; text-align: left; }
.qkov td.n, .qkov th.n { text-align: right; font-variant-numeric: tabular-nums; }
.qkov .t, .qkov .tok { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12px;
  white-space: pre; }
.qkov .t { background: #eef1f4; border-radius: 3px; padding: 0 3px; }
.qkov svg .tick { font-size: 10px; fill: #5b6470; } .qkov svg .axis { stroke: #9aa4ae; }
.qkov svg .unit { fill: none; stroke: #c9d0d7; stroke-dasharray: 3 3; }
.qkov svg .eig.pos { fill: #2ca02c; } .qkov svg .eig.neg { fill: #d62728; }
.qkov svg .attn-bg { fill: #fbfcfd; stroke: #d6dbe1; }
.qkov .tokens { line-height: 1.9; } .qkov .tok.dest { outline: 2px solid #ff7f0e; }
.qkov-tip { position: absolute; display: none; z-index: 10; pointer-events: none;
  background: #12263a; color: #fff; padding: 4px 8px; border-radius: 4px; font: 12px monospace; }
.qkov-tip.on { display: block; }
"""


def asset(name: str) -> str:
    """Text of a bundled asset (report.js, report.css)."""
    return files("qkov.report").joinpath("assets", name).read_text(encoding="utf-8")


def new_id(prefix: str) -> str:
    """A DOM id unique within this Python process (notebook outputs share one page)."""
    return f"{prefix}-{next(_ids)}"


def round_matrix(m: Any, digits: int = 3) -> list:
    """Nested lists of floats rounded for embedding (keeps the page small)."""
    m = jsonable(m)
    if isinstance(m, list):
        return [round_matrix(x, digits) for x in m]
    return None if m is None else round(float(m), digits)


def attention_data(tokens: Sequence[str], patterns: Mapping[str, Any]) -> dict:
    """The JSON an attention view reads: visible tokens and patterns by "layer.head"."""
    return {
        "tokens": [visible_token(t) for t in tokens],
        "patterns": {k: round_matrix(v) for k, v in patterns.items()},
    }


def data_block(view_id: str, data: Any) -> str:
    """`<script type="application/json">` holding `data`, safe against any string in it."""
    return f'<script type="application/json" id="{esc(view_id)}">{script_json(data)}</script>'


def attention_strip(view_id: str, tokens: Sequence[str], keys: Iterable[str]) -> str:
    """Sample text as token spans; hovering a destination colours its sources by weight
    for the head chosen in the menu (CircuitsVis-style)."""
    options = "".join(
        f'<option value="{esc(k)}">L{esc(k.replace(".", "H"))}</option>' for k in keys
    )
    spans = "".join(f'<span class="tok" data-i="{i}">{tok(t)}</span>' for i, t in enumerate(tokens))
    return (
        f'<div class="qkov-strip" data-src="{esc(view_id)}"><label>head '
        f'<select>{options}</select></label> <span class="note">hover a token: its '
        f'sources light up by attention weight</span><div class="tokens">{spans}</div></div>'
    )


def _as_patterns(pattern: Any) -> dict[str, Any]:
    """Accept [dest, src], [head, dest, src] or [layer, head, dest, src] (lists/arrays)."""
    p = jsonable(pattern)
    depth = 0
    x = p
    while isinstance(x, list) and x:
        depth, x = depth + 1, x[0]
    if depth == 2:
        return {"0.0": p}
    if depth == 3:
        return {f"0.{h}": m for h, m in enumerate(p)}
    if depth == 4:
        return {f"{l}.{h}": m for l, hs in enumerate(p) for h, m in enumerate(hs)}
    raise ValueError(f"pattern must be 2-, 3- or 4-dimensional, got depth {depth}")


def fragment(body: str) -> str:
    """Wrap a view for a notebook: scoped style + body + the hover script."""
    return (
        f'<div class="qkov"><style>{FRAGMENT_CSS}</style>{body}'
        f"<script>{asset('report.js')}</script></div>"
    )


def attention_html(tokens: Sequence[str], pattern: Any, max_heads: int = 16) -> str:
    """Notebook view of attention pattern(s) on one text: a heatmap per head and a token
    strip. `pattern`: [dest, src], [head, dest, src] or [layer, head, dest, src]."""
    patterns = _as_patterns(pattern)
    keys = list(patterns)[:max_heads]
    view = new_id("qkov-attn")
    maps = "".join(
        f"<figure>{attention_svg(tokens, patterns[k], view, k, f'attention L{k}')}"
        f"<figcaption>L{esc(k.replace('.', 'H'))}</figcaption></figure>"
        for k in keys
    )
    body = (
        data_block(view, attention_data(tokens, {k: patterns[k] for k in keys}))
        + attention_strip(view, tokens, keys)
        + f'<div class="plots">{maps}</div>'
    )
    return fragment(body)


SCORE_ORDER = (
    "previous_token_score",
    "induction_score",
    "prefix_matching_score",
    "copying_score",
    "duplicate_token_score",
)


# Column headings; "copying" is the OV eigenvalue statistic, "copying_score" the
# behavioural score of qkov.heads.
DISPLAY = {"copying": "OV \u03a3\u03bb/\u03a3|\u03bb|", "copying_score": "copying score"}


def head_table(records: Iterable[Mapping[str, Any] | Any]) -> str:
    """A table of heads: layer, head, role, copying statistic and every score found."""
    rows = [jsonable(r) for r in records]
    rows = [r for r in rows if isinstance(r, dict)]
    if not rows:
        return '<p class="nc">no heads</p>'
    flat = []
    for r in rows:
        scores = dict(r.get("scores") or {})
        scores.update(
            {
                k: v
                for k, v in r.items()
                if isinstance(v, (int, float))
                and not isinstance(v, bool)
                and k not in ("layer", "head")
            }
        )
        flat.append((r, scores))
    names = sorted(
        {k for _, s in flat for k in s},
        key=lambda k: (SCORE_ORDER.index(k) if k in SCORE_ORDER else 99, k),
    )
    head = "".join(f'<th class="n">{esc(DISPLAY.get(n, n.replace("_", " ")))}</th>' for n in names)
    body = []
    for r, s in flat:
        cells = "".join(f'<td class="n">{esc(num(_f(s.get(n))))}</td>' for n in names)
        body.append(
            f"<tr><td>L{esc(r.get('layer'))}H{esc(r.get('head'))}</td>"
            f"<td>{esc(r.get('role') or '')}</td>{cells}</tr>"
        )
    return (
        f'<table class="heads"><thead><tr><th>head</th><th>role</th>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _f(v: Any) -> float | None:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def head_table_html(records: Iterable[Mapping[str, Any] | Any]) -> str:
    """Notebook view of `head_table`."""
    return fragment(head_table(records))


def eigenvalues_html(eigenvalues: Any, label: str = "eigenvalues") -> str:
    """Notebook view: eigenvalues ([[re, im], ...] or complex numbers) in the complex plane,
    with the copying statistic sum(lambda)/sum(|lambda|)."""
    pts = []
    for e in jsonable(list(eigenvalues) if not isinstance(eigenvalues, list) else eigenvalues):
        pts.append(e if isinstance(e, list) else [e, 0.0])
    total = sum(math.hypot(a, b) for a, b in pts)
    stat = sum(a for a, _ in pts) / total if total else None
    return fragment(
        f"<figure>{complex_scatter(pts, label)}<figcaption>{esc(label)}: "
        f"\u03a3\u03bb/\u03a3|\u03bb| = {esc(num(stat))}</figcaption></figure>"
    )


def token_table(
    rows: Iterable[Mapping[str, Any]], columns: Sequence[tuple[str, str]], value: tuple[str, str]
) -> str:
    """Table of token columns (escaped, visible whitespace) plus one numeric column.
    columns: (key, heading) pairs; value: (key, heading)."""
    head = "".join(f"<th>{esc(h)}</th>" for _, h in columns) + f'<th class="n">{esc(value[1])}</th>'
    body = []
    for r in rows:
        cells = "".join(f'<td><span class="t">{tok(r.get(k, ""))}</span></td>' for k, _ in columns)
        body.append(f'<tr>{cells}<td class="n">{esc(num(_f(r.get(value[0]))))}</td></tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
