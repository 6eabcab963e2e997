"""How records print: the pieces the result records' `__repr__` share, so a REPL shows a
record's shapes as named axes (`tensor[layer=2, head=8] float32`) and its key numbers
rounded, never a tensor's values in bulk. Imports no torch."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

WIDTH = 92  # the longest line a record's repr writes, where it can break


def num(x: float | None, spec: str = ".3f") -> str:
    """x formatted with spec; NaN and infinities as plain 'nan', 'inf', '-inf' (no sign
    padding), None as '-'."""
    if x is None:
        return "-"
    x = float(x)
    return f"{x:{spec}}" if math.isfinite(x) else str(x)


def axes(shape: Sequence[int], names: Sequence[str] | None = None) -> str:
    """'[layer=2, head=8]' (or '[2, 8]' without names); names shorter than the shape name
    the leading axes."""
    dims = [int(d) for d in shape]
    names = list(names or ())[: len(dims)]
    named = [f"{n}={d}" for n, d in zip(names, dims, strict=False)]
    parts = named + [str(d) for d in dims[len(names) :]]
    return "[" + ", ".join(parts) + "]"


def tensor(t: Any, names: Sequence[str] | None = None) -> str:
    """'tensor[layer=2, head=8] float32': shape with named axes and dtype, no values."""
    return f"tensor{axes(t.shape, names)} {str(t.dtype).removeprefix('torch.')}"


def capped(items: Sequence[str], n: int) -> list[str]:
    """The first n items, then '... and K more' if K were left."""
    rest = len(items) - n
    return list(items[:n]) + ([f"... and {rest} more"] if rest > 0 else [])


def largest(values: dict[str, float], k: int) -> list[tuple[str, float]]:
    """The k entries of largest |value|, largest first, then the rest summed as
    ("the other N", their sum) if any were left: a split (writers of a logit) shown short,
    still summing to its whole."""
    ranked = sorted(values.items(), key=lambda kv: -abs(kv[1]))
    rest = ranked[k:]
    return ranked[:k] + ([(f"the other {len(rest)}", sum(v for _, v in rest))] if rest else [])


def preview(strs: Sequence[str], width: int = 32) -> str:
    """The strings joined, as a quoted literal of at most `width` characters (escapes
    counted) plus its quotes, cut with '\u2026'."""
    text = "".join(strs)[: width + 1]
    out = repr(text)
    while len(out) > width + 2:
        text = text[:-1]
        out = repr(text + "\u2026")
    return out


def wrap(
    lead: str, items: Sequence[str], end: str = "", sep: str = ", ", indent: str = "  "
) -> str:
    """`lead` and the items joined by `sep` (then `end`), as lines of at most WIDTH
    characters broken only between items (an item longer than a line gets one of its
    own): the first line starts with `indent`, the rest two spaces further in."""
    lines, line, fresh = [], indent + lead, True  # fresh: no item on this line yet
    for i, item in enumerate(items):
        piece = item + (sep if i < len(items) - 1 else end)
        if not fresh and len(line) + len(piece.rstrip()) > WIDTH:
            lines.append(line.rstrip())
            line = indent + "  "
        line, fresh = line + piece, False
    if not items:
        line += end
    return "\n".join([*lines, line.rstrip()])
