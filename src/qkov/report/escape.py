"""Escaping for the report: every string from a model or corpus passes through here.

Token strings are hostile input (a corpus may hold `<script>` or `"><img onerror=...>`),
so text goes through `esc` (HTML text and attribute values) and data embedded in a
`<script type="application/json">` block goes through `script_json`, which also escapes
`<`, `>`, `&` and U+2028/U+2029 so no string can close the block or break a JS parser."""

from __future__ import annotations

import html
import json
import math
from typing import Any

_CONTROL_NAMES = {"\n": "\u21b5", "\t": "\u21e5", "\r": "\u240d"}


def esc(text: Any) -> str:
    """HTML-escape any value's str() for text content and quoted attribute values."""
    return html.escape(_clean(str(text)), quote=True)


def _clean(text: str) -> str:
    """Replace lone surrogates (unencodable as UTF-8) with U+FFFD."""
    if not _has_surrogate(text):
        return text
    return "".join("\ufffd" if "\ud800" <= ch <= "\udfff" else ch for ch in text)


def _has_surrogate(text: str) -> bool:
    return any("\ud800" <= ch <= "\udfff" for ch in text)


def visible_token(token: str) -> str:
    """A token as a reader should see it: newline/tab shown as symbols, other control
    characters as \\xNN, and a space as '\u2423' when the token is only whitespace
    (newlines and tabs included: a code indent "\\n" + 8 spaces shows its 8 spaces).
    Returns plain (unescaped) text: pass the result through `esc`."""
    token = _clean(str(token))
    out = []
    for ch in token:
        if ch in _CONTROL_NAMES:
            out.append(_CONTROL_NAMES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F or 0x80 <= ord(ch) < 0xA0:
            out.append(f"\\x{ord(ch):02x}")
        elif ch in ("\u2028", "\u2029"):
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    shown = "".join(out)
    if token.strip() == "":
        shown = shown.replace(" ", "\u2423") or "\u2205"
    return shown


def tok(token: str) -> str:
    """visible_token, HTML-escaped: ready to put into HTML or SVG text."""
    return esc(visible_token(token))


def jsonable(obj: Any) -> Any:
    """Plain JSON data: tuples to lists, numpy/torch scalars and arrays to Python,
    NaN and infinities to None (JSON has no NaN and JSON.parse would reject it)."""
    if obj is None or isinstance(obj, (bool, str, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "to_dict") and callable(obj.to_dict):
        return jsonable(obj.to_dict())
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy arrays/scalars, torch tensors
        return jsonable(obj.tolist())
    if isinstance(obj, complex):
        return [jsonable(obj.real), jsonable(obj.imag)]
    if hasattr(obj, "__float__"):
        return jsonable(float(obj))
    raise TypeError(f"cannot store {type(obj).__name__} in analysis.json")


def dumps(obj: Any, indent: int | None = None) -> str:
    """json.dumps of `jsonable(obj)`, refusing NaN so the output is strict JSON."""
    return json.dumps(jsonable(obj), indent=indent, allow_nan=False, ensure_ascii=False)


def script_json(obj: Any) -> str:
    """JSON text safe inside <script type="application/json">: no `</script>`, no `<!--`,
    no raw U+2028/U+2029, and `&` escaped so nothing reads as an entity."""
    text = dumps(obj)
    return (
        text.replace("&", "\\u0026")
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )
