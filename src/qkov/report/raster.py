"""Raster heatmaps for the report: a palette PNG written with the standard library (one
pixel a cell), put in an SVG <image> and scaled up without smoothing. Used where one SVG
element a cell would make the page huge (GPT-2's 144 heads: composition maps, attention)."""

from __future__ import annotations

import base64
import math
import struct
import zlib
from collections.abc import Sequence


def blend(t: float, lo: str = "#ffffff", hi: str = "#08519c") -> str:
    """Colour at t in [0, 1] on a straight line from lo to hi (hex)."""
    t = 0.0 if not math.isfinite(t) else min(max(t, 0.0), 1.0)
    a = [int(lo[i : i + 2], 16) for i in (1, 3, 5)]
    b = [int(hi[i : i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{round(x + (y - x) * t):02x}" for x, y in zip(a, b, strict=True))


LEVELS = 101  # colours of a raster heatmap: t rounded to 0.01 (index 0: transparent)


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + tag
        + data
        + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    )


def png_indexed(rows: Sequence[bytes], palette: Sequence[str]) -> bytes:
    """An 8-bit palette PNG (stdlib only): `rows` of palette indices, one byte a pixel;
    index 0 is fully transparent."""
    height, width = len(rows), len(rows[0]) if rows else 0
    raw = b"".join(b"\x00" + bytes(r) for r in rows)  # filter type 0 on every row
    plte = b"".join(bytes(int(c[i : i + 2], 16) for i in (1, 3, 5)) for c in palette)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0))
        + _png_chunk(b"PLTE", plte)
        + _png_chunk(b"tRNS", b"\x00")
        + _png_chunk(b"IDAT", zlib.compress(raw, 9))
        + _png_chunk(b"IEND", b"")
    )


def ramp(hi: str = "#08519c", levels: int = LEVELS) -> list[str]:
    """The raster palette: index 0 (transparent, drawn white), then `levels` colours from
    white (t = 0) to `hi` (t = 1)."""
    return ["#ffffff"] + [blend(k / (levels - 1), hi=hi) for k in range(levels)]


def level(t: float, levels: int = LEVELS) -> int:
    """Palette index (1..levels) of t in [0, 1]."""
    t = 0.0 if not math.isfinite(t) else min(max(t, 0.0), 1.0)
    return 1 + round(t * (levels - 1))


def raster_uri(index_rows: Sequence[Sequence[int]], hi: str = "#08519c") -> str:
    """A data: URI of the PNG with one pixel a cell (the page scales it up, pixelated)."""
    png = png_indexed([bytes(r) for r in index_rows], ramp(hi))
    return "data:image/png;base64," + base64.b64encode(png).decode()
