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

from qkov.names import SCORE_NAMES
from qkov.report.escape import esc, jsonable, script_json, tok, visible_token
from qkov.report.heatmaps import attention_svg
from qkov.report.svg import complex_scatter, num

_ids = itertools.count()

# Scoped style for notebook fragments (the full page uses assets/report.css).
FRAGMENT_CSS = """
.qkov table { border-collapse: collapse; font-size: 13px; }
.qkov th, .qkov td { padding: 2px 8px; border-bottom: 1px solid #d6dbe1; text-align: left; }
.qkov td.n, .qkov th.n { text-align: right; font-variant-numeric: tabular-nums; }
.qkov .t, .qkov .tok { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12px;
  white-space: pre; }
.qkov td.tc { white-space: nowrap; } .qkov th.group { text-align: center; }
.qkov .t { background: #eef1f4; border-radius: 3px; padding: 0 3px; }
.qkov svg .tick { font-size: 10px; fill: #5b6470; } .qkov svg .axis { stroke: #9aa4ae; }
.qkov svg .unit { fill: none; stroke: #c9d0d7; stroke-dasharray: 3 3; }
.qkov svg .eig.pos { fill: #2ca02c; } .qkov svg .eig.neg { fill: #d62728; }
.qkov svg .attn-bg { fill: #fbfcfd; stroke: #d6dbe1; }
.qkov svg image.px { image-rendering: pixelated; }
.qkov .tokens { line-height: 1.9; } .qkov .tok.dest { outline: 2px solid #ff7f0e; }
.qkov-tip { position: absolute; display: none; z-index: 10; pointer-events: none;
  background: #12263a; color: #fff; padding: 4px 8px; border-radius: 4px; font: 12px monospace; }
.qkov-tip.on { display: block; }
.qkov .wide { overflow-x: auto; max-width: 100%; }
.qkov table.heads thead tr + tr th { white-space: normal; }
.qkov figure { margin: 0; } .qkov p.note { color: #5b6470; margin: 4px 0 8px; }
.qkov figcaption { font-size: 12px; color: #5b6470; text-align: center; }
.qkov .plots { display: flex; gap: 8px; flex-wrap: wrap; align-items: flex-start; }
.qkov .plots.layer { flex-wrap: nowrap; }
.qkov svg .bar.pos { fill: #4a7fb5; } .qkov svg .bar.neg { fill: #d0704f; }
.qkov .qkov-strip .tok { padding: 1px 1px; border-radius: 2px; border-right: 1px solid #dfe4ea; }
.qkov .wide.tall { max-height: 70vh; overflow-y: auto; }
.qkov .wide.tall thead { position: sticky; top: 0; z-index: 1; background: #fff; }
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
    """Example text as token spans; hovering a destination colours its sources by weight
    for the head chosen in the menu (CircuitsVis-style)."""
    options = "".join(
        f'<option value="{esc(k)}">L{esc(k.replace(".", "H"))}</option>' for k in keys
    )
    # <wbr> between tokens: a token is never broken, but the line may wrap between two.
    spans = "<wbr>".join(
        f'<span class="tok" data-i="{i}">{tok(t)}</span>' for i, t in enumerate(tokens)
    )
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


MAX_WEIGHTS = 300_000  # attention weights one notebook view embeds (causal rows, all heads)
DENSE_HEADS = 16  # more heads than this: each heatmap a small image, a row of them a layer
DENSE_MAP = 64  # side of a heatmap in a dense view (CSS px)


def shown_tokens(n_heads: int, n_tokens: int, budget: int = MAX_WEIGHTS) -> int:
    """How many leading tokens an attention view draws: all of them, or as many as keep the
    causal weights it embeds (n(n+1)/2 a head) within `budget` (64 at GPT-2's 144 heads)."""
    fit = int((math.sqrt(1 + 8 * budget / max(n_heads, 1)) - 1) / 2)
    return max(1, min(n_tokens, fit))


def attention_html(tokens: Sequence[str], pattern: Any, max_heads: int | None = None) -> str:
    """Notebook view of attention pattern(s) on one text: a heatmap per head and a token
    strip. `pattern`: [dest, src], [head, dest, src] or [layer, head, dest, src]. Every head
    is drawn (the first `max_heads` if given), on the first `shown_tokens` tokens, as the
    note above the view says; past DENSE_HEADS heads each map is a small image (the
    report's raster drawing), one row a layer."""
    patterns = _as_patterns(pattern)
    keys = list(patterns)
    total = len(keys)
    keys = keys[:max_heads] if max_heads else keys
    n_all = len(tokens)
    n = shown_tokens(len(keys), n_all)
    tokens = list(tokens)[:n]
    # Causal rows only (destination i reads sources 0..i): the page never looks further.
    pats = {k: [list(row[: i + 1]) for i, row in enumerate(patterns[k][:n])] for k in keys}
    dense = len(keys) > DENSE_HEADS
    cell = round(DENSE_MAP / max(n, 1), 2) if dense else None
    view = new_id("qkov-attn")

    def fig(k: str) -> str:
        name = f"L{k.replace('.', 'H')}"
        svg = attention_svg(tokens, pats[k], view, k, f"attention {name}", cell, raster=dense)
        return f"<figure>{svg}<figcaption>{esc(name)}</figcaption></figure>"

    if dense:  # one row a layer, scrolling sideways in its own box if wider than the page
        layers: dict[str, list[str]] = {}
        for k in keys:
            layers.setdefault(k.split(".")[0], []).append(k)
        maps = "".join(
            f'<div class="plots layer">{"".join(fig(k) for k in ks)}</div>'
            for ks in layers.values()
        )
        maps = f'<div class="wide">{maps}</div>'
    else:
        maps = f'<div class="plots">{"".join(fig(k) for k in keys)}</div>'
    heads = f"{len(keys)} of {total}" if len(keys) < total else f"{total}"
    heads += " head" if total == 1 else " heads"
    note = f"{heads} on {n_all} tokens"
    if n < n_all:
        note += (
            f"; the first {n} tokens are drawn (a view embeds at most {MAX_WEIGHTS:,} "
            "weights): pass a shorter text for the rest"
        )
    if dense:
        note += "; hover a map for its cell, or a token in the strip for a head's weights"
    body = (
        f'<p class="note">{esc(note)}.</p>'
        + data_block(view, attention_data(tokens, pats))
        + attention_strip(view, tokens, keys)
        + maps
    )
    return fragment(body)


SCORE_ORDER = SCORE_NAMES
# A column equal to another on every head is shown once: on the repeated-random probe the
# induction score *is* prefix matching; on text without a known repeat it is the reverse.
SAME_AS = {
    "scores": ("prefix_matching", "induction"),
    "text_scores": ("induction", "prefix_matching"),
}
GROUPS = (("scores", "on the random-token probe"), ("text_scores", "on the evaluation text"))


def head_rows(records: Any) -> list[dict[str, Any]]:
    """Plain HEAD dicts (schema.py) from analysis dicts, `HeadRecord`s or a
    `HeadClassification` (its `.records`); fields are read, never computed."""
    records = getattr(records, "records", records)
    rows = [jsonable(r) for r in records]
    return [r for r in rows if isinstance(r, dict)]


def _score_columns(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[list[str], str]:
    """Score names shown for `key` ("scores" or "text_scores"), and a note for a column left
    out because it repeats another on every head."""
    present = {n for r in rows for n, v in (r.get(key) or {}).items() if v is not None}
    names = [n for n in SCORE_ORDER if n in present]
    drop, same = SAME_AS[key]
    if (
        drop in names
        and same in names
        and all(
            same_value((r.get(key) or {}).get(drop), (r.get(key) or {}).get(same)) for r in rows
        )
    ):
        names.remove(drop)
        where = dict(GROUPS)[key].removeprefix("on ")
        return names, f"{drop} equals {same} on {where} for every head, so it is shown once."
    return names, ""


def same_value(a: Any, b: Any) -> bool:
    """Both undefined, or equal to 1e-9."""
    a, b = _f(a), _f(b)
    return a == b or (a is not None and b is not None and abs(a - b) <= 1e-9)


def head_table(records: Any, tall: bool = False) -> str:
    """A table of heads: label, the scores on the random-token probe and on the evaluation
    text (each group headed as such), and the OV circuit's sum(lambda)/sum(|lambda|).
    `tall` (many heads): the table scrolls in a box of its own height, its header kept."""
    rows = head_rows(records)
    if not rows:
        return '<p class="nc">no heads</p>'
    groups, notes = [], []
    for key, title in GROUPS:
        names, note = _score_columns(rows, key)
        if names:
            groups.append((key, title, names))
        notes += [note] if note else []
    top = "".join(f'<th colspan="{len(n)}" class="group">{esc(t)}</th>' for _, t, n in groups)
    # a score's name may wrap after its underscores (previous_/token): ten columns fit a laptop
    sub = "".join(
        f'<th class="n">{esc(n).replace("_", "_<wbr>")}</th>'
        for _, _, names in groups
        for n in names
    )
    body = []
    for r in rows:
        cells = "".join(
            f'<td class="n">{esc(num((r.get(key) or {}).get(n)))}</td>'
            for key, _, names in groups
            for n in names
        )
        ov = num(r.get("ov_eigenvalue_score"), signed=True)
        body.append(
            f"<tr><td>L{esc(r.get('layer'))}H{esc(r.get('head'))}</td>"
            f'<td class="label">{esc(r.get("label") or "")}</td>{cells}'
            f'<td class="n">{esc(ov)}</td></tr>'
        )
    note = f'<p class="note">{esc(" ".join(notes))}</p>' if notes else ""
    # In a scrolling box: with both score groups the table is wider than a laptop page.
    return (
        f'<div class="wide{" tall" if tall else ""}"><table class="heads"><thead><tr>'
        '<th rowspan="2">head</th>'
        '<th rowspan="2">label</th>'
        f'{top}<th rowspan="2" class="n">OV \u03a3\u03bb/\u03a3|\u03bb|</th></tr>'
        f"<tr>{sub}</tr></thead><tbody>{''.join(body)}</tbody></table></div>{note}"
    )


def _f(v: Any) -> float | None:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def head_table_html(records: Any) -> str:
    """Notebook view of `head_table`: HEAD dicts, `HeadRecord`s or a `HeadClassification`."""
    return fragment(head_table(records))


def eigenvalues_html(eigenvalues: Any, label: str = "eigenvalues", score: Any = None) -> str:
    """Notebook view: eigenvalues ([[re, im], ...] or complex numbers) in the complex plane,
    captioned with the sum(lambda)/sum(|lambda|) it is given. A `qkov.eigenvalues.OVStatistics`
    record may be passed instead: its `eigenvalues` and `eigenvalue_score` are drawn."""
    if hasattr(eigenvalues, "eigenvalue_score"):
        score = eigenvalues.eigenvalue_score if score is None else score
        eigenvalues = eigenvalues.eigenvalues
    pts = []
    for e in jsonable(list(eigenvalues) if not isinstance(eigenvalues, list) else eigenvalues):
        pts.append(e if isinstance(e, list) else [e, 0.0])
    stat = (
        f": \u03a3\u03bb/\u03a3|\u03bb| = {esc(num(score, signed=True))}"
        if score is not None
        else ""
    )
    return fragment(
        f"<figure>{complex_scatter(pts, label)}<figcaption>{esc(label)}{stat}</figcaption></figure>"
    )


def token_table(
    rows: Iterable[Mapping[str, Any]], columns: Sequence[tuple[str, str]], value: tuple[str, str]
) -> str:
    """Table of token columns (escaped, visible whitespace, never broken inside a token)
    plus one numeric column. columns: (key, heading) pairs; value: (key, heading)."""
    head = "".join(f"<th>{esc(h)}</th>" for _, h in columns) + f'<th class="n">{esc(value[1])}</th>'
    body = []
    for r in rows:
        cells = "".join(
            f'<td class="tc"><span class="t">{tok(r.get(k, ""))}</span></td>' for k, _ in columns
        )
        body.append(f'<tr>{cells}<td class="n">{esc(num(_f(r.get(value[0]))))}</td></tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
