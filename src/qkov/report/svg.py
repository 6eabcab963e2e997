"""Hand-written inline SVG plots: light, dependency-free, and every label escaped.

Each function returns an `<svg>` string sized by its viewBox so it scales with the page.
Hover details use SVG `<title>` (native tooltips, no script needed). Heatmaps are in
qkov.report.heatmaps."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from qkov.report.escape import esc
from qkov.report.fmt import num, si

__all__ = ["num", "si"]  # re-exported: the plots and the sections share one formatter

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b")


def _c(x: float) -> str:
    """Coordinate with 1 decimal (keeps the SVG small)."""
    return f"{x:.1f}".rstrip("0").rstrip(".")


def svg_open(width: float, height: float, label: str, cls: str = "plot") -> str:
    return (
        f'<svg class="{cls}" viewBox="0 0 {_c(width)} {_c(height)}" width="{_c(width)}" '
        f'height="{_c(height)}" role="img" aria-label="{esc(label)}" '
        'xmlns="http://www.w3.org/2000/svg">'
    )


def complex_scatter(
    eigs: Sequence[Sequence[float]], label: str, size: int = 170, compact: bool = False
) -> str:
    """Eigenvalues in the complex plane, scaled by the largest |lambda|; points with a
    positive real part in green (copying / matching), negative in red. `compact` (many
    heads): the points are two paths of dots, without a tooltip each."""
    pad = 14
    r = (size - 2 * pad) / 2
    cx = cy = size / 2
    pts = [
        (float(p[0]), float(p[1]))
        for p in eigs
        if p is not None and None not in p and all(math.isfinite(float(v)) for v in p)
    ]
    scale = max((math.hypot(a, b) for a, b in pts), default=0.0) or 1.0
    out = [svg_open(size, size, f"{label}: eigenvalues in the complex plane")]
    out.append(
        f'<circle cx="{_c(cx)}" cy="{_c(cy)}" r="{_c(r)}" class="unit"/>'
        f'<line x1="{pad}" y1="{_c(cy)}" x2="{size - pad}" y2="{_c(cy)}" class="axis"/>'
        f'<line x1="{_c(cx)}" y1="{pad}" x2="{_c(cx)}" y2="{size - pad}" class="axis"/>'
        f'<text x="{size - pad}" y="{_c(cy - 3)}" class="tick" text-anchor="end">Re</text>'
        f'<text x="{_c(cx + 3)}" y="{pad + 8}" class="tick">Im</text>'
        f'<text x="{size - 2}" y="{size - 2}" class="tick" text-anchor="end">'
        f"|\u03bb|max={esc(num(scale))}</text>"
    )
    if compact:
        for cls, keep in (("pos", True), ("neg", False)):
            d = "".join(
                f"M{_c(cx + a / scale * r)} {_c(cy - b / scale * r)}h0"
                for a, b in pts
                if (a > 0) == keep
            )
            if d:
                out.append(f'<path d="{d}" class="eig dots {cls}"/>')
        pts_drawn: list = []
    else:
        pts_drawn = pts
    for a, b in pts_drawn:
        x, y = cx + a / scale * r, cy - b / scale * r
        cls = "pos" if a > 0 else "neg"
        sign = "+" if b >= 0 else "\u2212"
        out.append(
            f'<circle cx="{_c(x)}" cy="{_c(y)}" r="3" class="eig {cls}">'
            f"<title>\u03bb = {esc(num(a, 4))} {sign} {esc(num(abs(b), 4))}i</title></circle>"
        )
    if not pts:
        out.append(
            f'<text x="{_c(cx)}" y="{_c(cy + 14)}" class="tick" '
            'text-anchor="middle">no eigenvalues</text>'
        )
    out.append("</svg>")
    return "".join(out)


def hbar_chart(
    items: Sequence[tuple[str, float]], label: str, unit: str = "", width: int = 520
) -> str:
    """Horizontal bars (values may be negative); labels escaped, <title> per bar. The
    label column widens for long labels (the plot keeps its width); value labels get
    `bar_digits` decimals."""
    row, right = 22, 70
    # about 5.6 px a character at the 10 px tick font: a long label is not cut off at the left
    left = max(150, math.ceil(5.6 * max((len(str(n)) for n, _ in items), default=0)) + 12)
    width += left - 150
    vals = [v for _, v in items if v is not None and math.isfinite(v)]
    digits = bar_digits(vals)
    lo, hi = min(0.0, *vals) if vals else 0.0, max(0.0, *vals) if vals else 1.0
    span = (hi - lo) or 1.0
    plot_w = width - left - right
    zero = left + (0 - lo) / span * plot_w
    h = row * len(items) + 10
    out = [svg_open(width, h, label)]
    out.append(f'<line x1="{_c(zero)}" y1="2" x2="{_c(zero)}" y2="{h - 4}" class="axis"/>')
    for i, (name, v) in enumerate(items):
        y = 5 + i * row
        out.append(
            f'<text x="{left - 6}" y="{y + 13}" class="tick" text-anchor="end">{esc(name)}</text>'
        )
        if v is None or not math.isfinite(v):
            out.append(f'<text x="{_c(zero + 4)}" y="{y + 13}" class="tick">n/a</text>')
            continue
        x = left + (min(v, 0.0) - lo) / span * plot_w
        bw = abs(v) / span * plot_w
        out.append(
            f'<rect x="{_c(x)}" y="{y + 2}" width="{_c(max(bw, 0.5))}" height="{row - 6}" '
            f'class="bar {"neg" if v < 0 else "pos"}"><title>{esc(name)}: '
            f"{esc(num(v, 4))}{esc(unit)}</title></rect>"
        )
        out.append(
            f'<text x="{_c(max(x + bw, zero) + 4)}" y="{y + 13}" class="tick">'
            f"{esc(num(v, digits))}{esc(unit)}</text>"
        )
    out.append("</svg>")
    return "".join(out)


def bar_digits(values: Sequence[float]) -> int:
    """Decimals of a bar chart's value labels: the report's 3, or more where the largest
    |value| is under 0.1, so that it shows two significant digits (bars of 0.0013 and
    -0.0004 nats are not all labelled 0.000 beside bars of visibly different lengths)."""
    top = max((abs(v) for v in values), default=0.0)
    if not top or top >= 0.1:
        return 3
    return min(6, max(3, 1 - math.floor(math.log10(top))))


def nice_step(lo: float, hi: float, n: int = 5) -> float:
    """A 1-2-5 step giving about n intervals over [lo, hi]."""
    raw = (hi - lo) / n if hi > lo else 1.0
    mag = 10 ** math.floor(math.log10(raw))
    return min((m * mag for m in (1, 2, 5, 10) if m * mag >= raw * (1 - 1e-9)), default=raw)


def ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round tick values inside [lo, hi], about n intervals apart."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo] if math.isfinite(lo) else []
    step = nice_step(lo, hi, n)
    first = math.ceil(lo / step - 1e-9)
    last = math.floor(hi / step + 1e-9)
    return [round(k * step, 12) for k in range(first, last + 1)]


def y_range(values: Sequence[float | None], pad: float = 0.04) -> tuple[float, float]:
    """[lo, hi] covering every finite value with `pad` of the span to spare on each side (so
    no line runs along the frame); a constant series gets +-0.5 around its value."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return 0.0, 1.0
    lo, hi = min(vals), max(vals)
    if hi == lo:
        return lo - 0.5, hi + 0.5
    return lo - pad * (hi - lo), hi + pad * (hi - lo)


def _tick_text(t: float, step: float) -> str:
    """A y tick with just enough decimals for its step: 2.5, 3.0, 0.25."""
    return num(t, max(0, -math.floor(math.log10(step) + 1e-9)) if step > 0 else 3)


def line_chart(
    series: dict[str, Sequence[Sequence[float | None]]],
    label: str,
    x_label: str,
    y_label: str,
    width: int = 560,
    height: int = 220,
    x_format: Callable[[float], str] = si,
    band: tuple[float, float] | None = None,
    x_integer: bool = False,
) -> str:
    """Lines of [x, y] points with axes, ticks and a legend; None values break the line.
    The y-range covers every point of every series drawn; `band` shades an x interval;
    x_integer: x counts something (checkpoints, steps), so only whole x values are ticked."""
    left, right, top, bottom = 52, 12, 10, 36
    pts = {
        k: [(float(p[0]), p[1]) for p in v if p and p[0] is not None and math.isfinite(p[0])]
        for k, v in series.items()
    }
    # a series with no value to draw (a score not measured) has no line and no legend entry
    pts = {k: v for k, v in pts.items() if any(y is not None and math.isfinite(y) for _, y in v)}
    xs = [x for v in pts.values() for x, _ in v]
    ys = [y for v in pts.values() for _, y in v if y is not None and math.isfinite(y)]
    if not xs or not ys:
        return ""
    x0, x1 = min(xs), max(xs)
    x1 = x1 if x1 > x0 else x0 + 1
    y0, y1 = y_range(ys)
    pw, ph = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * ph

    out = [svg_open(width, height + 8 + 16 * ((len(pts) + 1) // 2), label)]
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" class="frame"/>')
    if band is not None:
        b0, b1 = (min(max(b, x0), x1) for b in band)
        out.append(
            f'<rect x="{_c(sx(b0))}" y="{top}" width="{_c(max(sx(b1) - sx(b0), 1))}" '
            f'height="{ph}" class="band"><title>phase change: {esc(x_format(band[0]))} to '
            f"{esc(x_format(band[1]))} {esc(x_label)}</title></rect>"
        )
    step = nice_step(y0, y1)
    for t in ticks(y0, y1):
        out.append(
            f'<line x1="{left}" y1="{_c(sy(t))}" x2="{left + pw}" y2="{_c(sy(t))}" '
            f'class="grid"/><text x="{left - 4}" y="{_c(sy(t) + 3)}" class="tick" '
            f'text-anchor="end">{esc(_tick_text(t, step))}</text>'
        )
    for t in ticks(x0, x1):
        if x_integer and t != int(t):
            continue
        out.append(
            f'<text x="{_c(sx(t))}" y="{top + ph + 13}" class="tick" '
            f'text-anchor="middle">{esc(x_format(t))}</text>'
        )
    out.append(
        f'<text x="{left + pw / 2}" y="{top + ph + 28}" class="tick" '
        f'text-anchor="middle">{esc(x_label)}</text>'
        f'<text x="12" y="{top + ph / 2}" class="tick" text-anchor="middle" '
        f'transform="rotate(-90 12 {top + ph / 2})">{esc(y_label)}</text>'
    )
    for k, (name, v) in enumerate(pts.items()):
        colour = PALETTE[k % len(PALETTE)]
        out.extend(_polylines([(sx(x), None if y is None else sy(y)) for x, y in v], colour))
        lx, ly = left + (k % 2) * (pw // 2), height + 12 + 16 * (k // 2)
        out.append(
            f'<rect x="{lx}" y="{ly - 8}" width="12" height="4" fill="{colour}"/>'
            f'<text x="{lx + 16}" y="{ly - 3}" class="tick legend">{esc(name)}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def _polylines(points: Sequence[tuple[float, float | None]], colour: str) -> list[str]:
    """One polyline per run of defined points (a None or NaN y breaks the line); a run of one
    point is a dot."""
    runs: list[list[str]] = [[]]
    for x, y in points:
        if y is None or not math.isfinite(y):
            runs.append([])
        else:
            runs[-1].append(f"{_c(x)},{_c(y)}")
    out = []
    for run in (r for r in runs if r):
        out.append(
            f'<polyline points="{" ".join(run)}" fill="none" stroke="{colour}" stroke-width="1.8"/>'
        )
        if len(run) == 1:
            cx, cy = run[0].split(",")
            out.append(f'<circle cx="{cx}" cy="{cy}" r="2.5" fill="{colour}"/>')
    return out


def circuit_diagram(
    prev: tuple[int, int],
    ind: tuple[int, int],
    k_comp: float | None,
    prev_score: float | None,
    ind_score: float | None,
    prev_label: str = "previous_token",
) -> str:
    """Previous-token head --K-composition--> induction head, with their scores. `prev_label`
    is the partner's own label, so a partner that is not a previous-token head says so."""
    w, h = 520, 112
    out = [svg_open(w, h, f"induction circuit L{prev[0]}H{prev[1]} to L{ind[0]}H{ind[1]}")]
    boxes = [
        (10, f"L{prev[0]}H{prev[1]}", f"label: {prev_label}", prev_score, "previous_token"),
        (330, f"L{ind[0]}H{ind[1]}", "label: induction", ind_score, "induction"),
    ]
    for x, name, role, score, what in boxes:
        out.append(
            f'<rect x="{x}" y="20" width="180" height="72" rx="8" class="node"/>'
            f'<text x="{x + 90}" y="44" class="node-name" text-anchor="middle">'
            f"{esc(name)}</text>"
            f'<text x="{x + 90}" y="62" class="tick" text-anchor="middle">{esc(role)}</text>'
            f'<text x="{x + 90}" y="80" class="tick" text-anchor="middle">'
            f"{esc(what)} {esc(num(score))}</text>"
        )
    out.append(
        '<line x1="192" y1="56" x2="322" y2="56" class="arrow"/>'
        '<path d="M322,56 l-10,-6 v12 z" class="arrowhead"/>'
        f'<text x="257" y="48" class="tick" text-anchor="middle">K-composition</text>'
        f'<text x="257" y="74" class="tick" text-anchor="middle">{esc(num(k_comp))}</text>'
    )
    out.append(
        '<text x="260" y="108" class="tick" text-anchor="middle">'
        "[a][b] \u2026 [a] \u2192 [b]: the key reads \u201cwhat came before me\u201d"
        "</text></svg>"
    )
    return "".join(out)
