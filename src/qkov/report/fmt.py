"""The report's number formats, one rule each, used by every section and plot.

    num(x)     a measured value (score, loss, logit): fixed decimals (3 by default), so
               0.2 shows as 0.200, 1 as 1.000 and 0.000004 as 0.000 (columns stay
               aligned; a table never mixes 6.85e-04 with 0.2); |x| >= 10^4 as si(x).
    count(n)   an integer count with thousands separators: 65,536.
    si(x)      an amount on an axis or of tokens: 4M, 16M, 65.5M, 1.5k, 250.

None, NaN and infinities show as an en dash everywhere."""

from __future__ import annotations

import math
from typing import Any

DASH = "\u2013"
_SUFFIXES = ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k"))


def _finite(x: Any) -> float | None:
    if x is None or isinstance(x, bool):
        return None
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def num(x: Any, digits: int = 3, signed: bool = False) -> str:
    """A measured value with `digits` fixed decimals; `signed` writes "+" before a positive
    value (for statistics in [-1, 1] such as sum(lambda)/sum(|lambda|))."""
    v = _finite(x)
    if v is None:
        return DASH
    sign = "+" if signed and v > 0 else ""
    if abs(v) >= 1e4:
        return sign + si(v)
    text = f"{v:.{digits}f}"
    if float(text) == 0:
        text = text.lstrip("-")  # no "-0.000"
    return sign + text


def count(n: Any) -> str:
    """An integer count: 65,536."""
    v = _finite(n)
    return DASH if v is None else f"{round(v):,}"


def si(x: Any) -> str:
    """Three significant digits and a suffix: 4M, 16M, 65.5M, 1.5k; 0 as 0."""
    v = _finite(x)
    if v is None:
        return DASH
    for factor, suffix in _SUFFIXES:
        if abs(v) >= factor:
            return f"{v / factor:.3g}{suffix}"
    return f"{v:.3g}"


def stderr_text(stderr: float | None, over: str = "") -> str:
    """The spread after a mean: " \u00b1 0.131" and `over` (what it is the standard error
    over), or, for a single sequence (NaN in an IclResult, null in analysis.json), that
    there is no spread to show, not a spread of 0."""
    if stderr is None or not math.isfinite(stderr):
        return " (one sequence: no standard error)"
    return f" \u00b1 {stderr:.3f}{over}"
