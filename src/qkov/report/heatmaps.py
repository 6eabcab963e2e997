"""Heatmaps: a matrix drawn as coloured cells (composition scores, attention patterns), as
SVG rects when small and as one raster image, a pixel a cell, when large (qkov.report.raster).

Hover details: the small heatmap's cells carry a <title>; the attention heatmap's and the
dense heatmap's cells are looked up by the page script from embedded JSON."""

from __future__ import annotations

import math
from collections.abc import Sequence

from qkov.report.escape import esc
from qkov.report.fmt import num
from qkov.report.raster import LEVELS, blend, level, raster_uri
from qkov.report.svg import _c, svg_open


def raster_image(x: float, y: float, w: float, h: float, uri: str) -> str:
    """An <image> of a raster heatmap, scaled without smoothing (one pixel a cell)."""
    return (
        f'<image class="px" x="{_c(x)}" y="{_c(y)}" width="{_c(w)}" height="{_c(h)}" '
        f'preserveAspectRatio="none" image-rendering="pixelated" href="{uri}"/>'
    )


def heatmap(
    values: Sequence[Sequence[float | None]],
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    label: str,
    vmin: float = 0.0,
    vmax: float | None = None,
    cell: int = 34,
    annotate: bool = True,
    hi: str = "#08519c",
    title: str | None = None,
) -> str:
    """A small labelled matrix; None cells are drawn grey (not defined). Each cell has a
    <title> tooltip "row \u2190 col: value"; `title` is drawn above the matrix."""
    finite = [v for row in values for v in row if v is not None and math.isfinite(v)]
    top = vmax if vmax is not None else max(finite, default=1.0)
    span = (top - vmin) or 1.0
    left, head = 64, 54 + (18 if title else 0)
    w = max(left + cell * len(col_labels) + 4, 8 * len(title or "") + 8)
    h = head + cell * len(row_labels) + 4
    out = [svg_open(w, h, label)]
    if title:
        out.append(f'<text x="4" y="14" class="title">{esc(title)}</text>')
    for j, c in enumerate(col_labels):
        x = left + j * cell + cell / 2
        out.append(
            f'<text x="{_c(x)}" y="{head - 6}" class="tick" text-anchor="start" '
            f'transform="rotate(-45 {_c(x)} {head - 6})">{esc(c)}</text>'
        )
    for i, r in enumerate(row_labels):
        y = head + i * cell + cell / 2 + 4
        out.append(
            f'<text x="{left - 4}" y="{_c(y)}" class="tick" text-anchor="end">{esc(r)}</text>'
        )
        for j, v in enumerate(values[i]):
            x0, y0 = left + j * cell, head + i * cell
            if v is None or not math.isfinite(v):  # e.g. a head composing with its own layer
                out.append(f'<rect x="{x0}" y="{y0}" width="{cell}" height="{cell}" class="na"/>')
                continue
            t = (v - vmin) / span
            out.append(
                f'<rect x="{x0}" y="{y0}" width="{cell}" height="{cell}" '
                f'fill="{blend(t, hi=hi)}" class="cell"><title>{esc(r)} \u2190 {esc(col_labels[j])}'
                f": {esc(num(v))}</title></rect>"
            )
            if annotate:
                ink = "light" if t > 0.55 else "dark"
                out.append(
                    f'<text x="{_c(x0 + cell / 2)}" y="{_c(y0 + cell / 2 + 3)}" '
                    f'class="val {ink}" text-anchor="middle">{esc(num(v, 2))}</text>'
                )
    out.append("</svg>")
    return "".join(out)


def attention_svg(
    tokens: Sequence[str],
    pattern: Sequence[Sequence[float]],
    src: str,
    key: str,
    label: str,
    cell: int | None = None,
    min_weight: float = 0.01,
    raster: bool = False,
) -> str:
    """Attention pattern [dest, src] as a lower-triangular heatmap. Cells under `min_weight`
    are left blank to keep the file small. `src` (the id of a JSON data block) and `key`
    ("layer.head") let the page script show "destination \u2190 source: weight" on hover.
    `raster` (many heads): the cells are one PNG image, a pixel each, not a rect each."""
    n = len(tokens)
    cell = cell or max(5, min(16, 340 // max(n, 1)))
    margin = 4
    w = h = margin + cell * n + margin
    out = [
        svg_open(w, h, label, cls="attn"),
        f'<g data-attn="{esc(key)}" data-src="{esc(src)}" data-cell="{cell}" '
        f'data-margin="{margin}">',
    ]
    out.append(
        f'<rect x="{margin}" y="{margin}" width="{cell * n}" height="{cell * n}" class="attn-bg"/>'
    )
    if raster:
        rows = []
        for i in range(n):
            row = pattern[i] if i < len(pattern) else []
            rows.append(
                [
                    level(row[j]) if j <= i and j < len(row) and _shown(row[j], min_weight) else 0
                    for j in range(n)
                ]
            )
        if n:
            out.append(raster_image(margin, margin, cell * n, cell * n, raster_uri(rows)))
        out.append("</g></svg>")
        return "".join(out)
    for i in range(n):
        row = pattern[i]
        for j in range(min(i + 1, len(row))):
            v = row[j]
            if v is None or v < min_weight:
                continue
            out.append(
                f'<rect x="{margin + j * cell}" y="{margin + i * cell}" width="{cell}" '
                f'height="{cell}" fill="{blend(v)}"/>'
            )
    out.append("</g></svg>")
    return "".join(out)


def _shown(v: float | None, min_weight: float) -> bool:
    return v is not None and math.isfinite(v) and v >= min_weight


def dense_heatmap(
    values: Sequence[Sequence[float | None]],
    row_groups: Sequence[tuple[str, int]],
    col_groups: Sequence[tuple[str, int]],
    label: str,
    vmin: float,
    vmax: float,
    hi: str = "#08519c",
    title: str | None = None,
    src: str = "",
    key: str = "",
    size: int = 400,
) -> str:
    """A large matrix (e.g. 132 x 132 heads) as one PNG image, a pixel a cell, with a label
    per block of rows / columns (`*_groups`: (label, count) in order, e.g. a layer's heads),
    lines between blocks and a colour bar from vmin to vmax. Undefined cells (None) are
    grey. No per-cell element: `src` (a JSON data block) and `key` let the page script show
    a cell's labels and value on hover."""
    n_rows, n_cols = len(values), max((len(r) for r in values), default=0)
    cell = max(2, min(16, size // max(n_rows, n_cols, 1)))
    left, head = 34, 30 + (18 if title else 0)
    w = max(left + cell * n_cols + 8, 8 * len(title or "") + 8, 240)
    h = head + cell * n_rows + 40
    span = (vmax - vmin) or 1.0
    rows = [
        [
            level((v - vmin) / span, LEVELS)
            if v is not None and isinstance(v, (int, float)) and math.isfinite(v)
            else 0
            for v in list(r) + [None] * (n_cols - len(r))
        ]
        for r in values
    ]
    out = [svg_open(w, h, label, cls="plot dense")]
    if title:
        out.append(f'<text x="4" y="14" class="title">{esc(title)}</text>')
    gw, gh = cell * n_cols, cell * n_rows
    out.append(
        f'<g data-grid="{esc(key)}" data-src="{esc(src)}" data-cell="{cell}" '
        f'data-x0="{left}" data-y0="{head}">'
        f'<rect x="{left}" y="{head}" width="{gw}" height="{gh}" class="na"/>'
    )
    if n_rows and n_cols:
        out.append(raster_image(left, head, gw, gh, raster_uri(rows, hi)))
    out.append("</g>")
    for groups, vertical in ((col_groups, True), (row_groups, False)):
        at = 0
        for k, (name, count) in enumerate(groups):
            mid = (at + count / 2) * cell
            if vertical:
                out.append(
                    f'<text x="{_c(left + mid)}" y="{head - 4}" class="tick" '
                    f'text-anchor="middle">{esc(name)}</text>'
                )
            else:
                out.append(
                    f'<text x="{left - 4}" y="{_c(head + mid + 3)}" class="tick" '
                    f'text-anchor="end">{esc(name)}</text>'
                )
            at += count
            if 0 < k + 1 < len(groups):
                p = at * cell
                out.append(
                    f'<line x1="{_c(left + p)}" y1="{head}" x2="{_c(left + p)}" '
                    f'y2="{head + gh}" class="sep"/>'
                    if vertical
                    else f'<line x1="{left}" y1="{_c(head + p)}" x2="{left + gw}" '
                    f'y2="{_c(head + p)}" class="sep"/>'
                )
    # colour bar: the palette's ends and middle, labelled with the values they stand for
    bar_y, bar_w = head + gh + 10, 160
    grad = f"{esc(key)}-{esc(src)}-bar"
    out.append(
        f'<defs><linearGradient id="{grad}"><stop offset="0" stop-color="#ffffff"/>'
        f'<stop offset="1" stop-color="{hi}"/></linearGradient></defs>'
        f'<rect x="{left}" y="{bar_y}" width="{bar_w}" height="8" fill="url(#{grad})" '
        'class="cbar"/>'
        f'<text x="{left}" y="{bar_y + 20}" class="tick">{esc(num(vmin))}</text>'
        f'<text x="{left + bar_w}" y="{bar_y + 20}" class="tick" text-anchor="end">'
        f"{esc(num(vmax))}</text>"
        f'<rect x="{left + bar_w + 14}" y="{bar_y}" width="8" height="8" class="na"/>'
        f'<text x="{left + bar_w + 26}" y="{bar_y + 8}" class="tick">not defined</text>'
    )
    out.append("</svg>")
    return "".join(out)
