"""The report's composition section: Q-, K- and V-composition of every pair of heads in
successive layers against their random baseline (`qkov.composition`). Small models get one
annotated heatmap per layer pair; many heads (GPT-2's 144) one pixel map per kind, with its
strongest pairs listed. It draws analysis.json's scores; it computes none."""

from __future__ import annotations

import math
from typing import Any

from qkov.report.escape import esc
from qkov.report.fmt import num
from qkov.report.heads import EXPANDED_HEADS, _head_label
from qkov.report.heatmaps import dense_heatmap, heatmap
from qkov.report.notes import not_computed
from qkov.report.svg import bar_digits
from qkov.report.widgets import data_block, round_matrix


def composition_section(m: dict, view_id: str = "") -> str:
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
    n_heads = sum(len(layer) for layer in (comp.get("q") or comp.get("k") or comp.get("v") or []))
    if n_heads > EXPANDED_HEADS and view_id:
        return _dense_composition(comp, n_layers, vmax, view_id)
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
            title = f"{kind.upper()}-composition into layer {l1}"
            plot = heatmap(vals, rows, cols, title, vmin, vmax, hi="#a63603", title=title)
            spread = _baseline(b, (comp.get("baseline_std") or {}).get(kind))
            figs.append(
                f"<figure>{plot}<figcaption>baseline (random heads) {esc(spread)}"
                "</figcaption></figure>"
            )
    return COMPOSITION_NOTE + f'<div class="plots">{"".join(figs)}</div>'


COMPOSITION_NOTE = (
    '<p class="note">Rows: later head (reads), columns: earlier head (writes). '
    "Score \u2016W<sub>A</sub>W<sub>B</sub>\u2016<sub>F</sub> / "
    "(\u2016W<sub>A</sub>\u2016<sub>F</sub>\u2016W<sub>B</sub>\u2016<sub>F</sub>); "
    "white = at or below the baseline.</p>"
)
TOP_PAIRS = 8  # the strongest pairs listed under each dense composition map


def _dense_composition(comp: dict, n_layers: int, vmax: float, view_id: str) -> str:
    """Many heads (GPT-2 small: 132 x 132 pairs a kind): each kind is one image of every
    (later head, earlier head) pair, blocks of a layer's heads, cells with no earlier head
    grey; hover reads the values from a JSON block; the strongest pairs are listed."""
    first = comp.get("q") or comp.get("k") or comp.get("v")
    sizes = [len(first[l]) for l in range(n_layers)]
    rows = [(l1, h1) for l1 in range(1, n_layers) for h1 in range(sizes[l1])]
    cols = [(l0, h0) for l0 in range(n_layers - 1) for h0 in range(sizes[l0])]
    base = comp.get("baseline") or {}
    data: dict[str, Any] = {
        "rows": [_head_label(*r) for r in rows],
        "cols": [_head_label(*c) for c in cols],
    }
    figs, tops = [], []
    for kind in "qkv":
        grid = comp.get(kind)  # [l_earlier][h_earlier][l_later][h_later]
        if grid is None:
            continue
        vals = [[grid[l0][h0][l1][h1] if l0 < l1 else None for l0, h0 in cols] for l1, h1 in rows]
        data[kind] = round_matrix(vals)  # 3 decimals: the hover shows num(v)
        b = base.get(kind)
        vmin = b if isinstance(b, (int, float)) else 0.0
        title = f"{kind.upper()}-composition"
        plot = dense_heatmap(
            vals,
            [(f"L{l}", sizes[l]) for l in range(1, n_layers)],
            [(f"L{l}", sizes[l]) for l in range(n_layers - 1)],
            f"{title}: {len(rows)} later heads x {len(cols)} earlier heads",
            vmin,
            vmax,
            hi="#a63603",
            title=title,
            src=view_id,
            key=kind,
        )
        spread = _baseline(b, (comp.get("baseline_std") or {}).get(kind))
        figs.append(
            f"<figure>{plot}<figcaption>baseline (random heads) {esc(spread)}; hover a cell "
            "for its heads and score</figcaption></figure>"
        )
        ranked = sorted(
            (
                (v, r, c)
                for r, row in zip(data["rows"], vals, strict=True)
                for c, v in zip(data["cols"], row, strict=True)
                if isinstance(v, (int, float)) and math.isfinite(v)
            ),
            key=lambda t: -t[0],
        )[:TOP_PAIRS]
        items = "".join(
            f'<tr><td>{esc(r)} \u2190 {esc(c)}</td><td class="n">{esc(num(v))}</td></tr>'
            for v, r, c in ranked
        )
        tops.append(
            f'<table class="top-pairs"><thead><tr><th>{esc(kind.upper())}: later \u2190 '
            f'earlier</th><th class="n">score</th></tr></thead><tbody>{items}</tbody></table>'
        )
    n_pairs = sum(1 for l1, _ in rows for l0, _ in cols if l0 < l1)
    note = (
        f'<p class="note">{len(rows) + sizes[0]} heads: each kind is one map of all '
        f"{n_pairs:,} (later, earlier) pairs, a block per layer (grey: the earlier head is not "
        f"in an earlier layer); hover a cell for its score. The {TOP_PAIRS} strongest pairs "
        "of each kind are listed; every score is in analysis.json (composition).</p>"
    )
    return (
        COMPOSITION_NOTE
        + note
        + data_block(view_id, data)
        + f'<div class="plots">{"".join(figs)}</div>'
        + f'<h5>strongest pairs</h5><div class="plots">{"".join(tops)}</div>'
    )


def _baseline(mean: Any, std: Any) -> str:
    """'0.043 \u00b1 0.012', or more decimals where the spread is small, so that it shows
    two significant digits (a spread of 0.0004 read '\u00b1 0.000')."""
    if not isinstance(std, (int, float)):
        return num(mean)
    digits = bar_digits([std])
    return f"{num(mean, digits)} \u00b1 {num(std, digits)}"


def _flat(x: Any) -> list:
    if isinstance(x, list):
        return [v for item in x for v in _flat(item)]
    return [x] if isinstance(x, (int, float)) else []
