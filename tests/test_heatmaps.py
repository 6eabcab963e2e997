"""report/heatmaps.py and the raster PNG behind its large heatmaps (report/raster.py):
colours, undefined cells, escaping. Plots are read back by parsing the SVG they return."""

from __future__ import annotations

import math
from xml.etree import ElementTree as ET

from qkov.report.fmt import num
from qkov.report.heatmaps import dense_heatmap, heatmap
from qkov.report.raster import blend, level, png_indexed, ramp

NS = {"s": "http://www.w3.org/2000/svg"}
EVIL = '<script>alert(1)</script>"&'


def svg(text: str) -> ET.Element:
    """Parse a plot; it must be well-formed XML (an unescaped label would break it)."""
    return ET.fromstring(text)


def test_heatmap_scale_title_and_undefined_cells():
    text = heatmap(
        [[0.0, 1.0], [None, math.nan]], ["L1H0", EVIL], [EVIL, "L0H1"], EVIL, title="T <1>"
    )
    root = svg(text)
    assert root.find("s:text[@class='title']", NS).text == "T <1>"
    cells = root.findall("s:rect[@class='cell']", NS)
    assert [c.get("fill") for c in cells] == [blend(0.0), blend(1.0)] == ["#ffffff", "#08519c"]
    assert len(root.findall("s:rect[@class='na']", NS)) == 2
    assert cells[1].find("s:title", NS).text == f"L1H0 \u2190 L0H1: {num(1.0)}"
    assert "<script>" not in text


# ---------------------------------------------------------------------------- raster heatmaps
def read_png(data: bytes) -> tuple[list[list[int]], list[str], bytes]:
    """Decode an 8-bit palette PNG written by png_indexed: (index rows, palette, tRNS)."""
    import struct
    import zlib

    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        tag, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n : pos + 12 + n])
        assert crc == zlib.crc32(tag + body) & 0xFFFFFFFF
        chunks[tag] = chunks.get(tag, b"") + body
        pos += 12 + n
    w, h, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (depth, colour) == (8, 3)
    raw = zlib.decompress(chunks[b"IDAT"])
    rows = [list(raw[r * (w + 1) + 1 : (r + 1) * (w + 1)]) for r in range(h)]
    assert all(raw[r * (w + 1)] == 0 for r in range(h))
    pal = chunks[b"PLTE"]
    palette = ["#" + pal[i : i + 3].hex() for i in range(0, len(pal), 3)]
    return rows, palette, chunks[b"tRNS"]


def png_of(image_href: str) -> bytes:
    import base64

    assert image_href.startswith("data:image/png;base64,")
    return base64.b64decode(image_href.split(",", 1)[1])


def test_png_indexed_round_trips():
    rows = [[0, 1, 2], [3, 101, 0]]
    got, palette, trns = read_png(png_indexed([bytes(r) for r in rows], ramp()))
    assert got == rows and trns == b"\x00"  # index 0: transparent
    assert palette[1] == "#ffffff" and palette[101] == "#08519c" and len(palette) == 102
    assert level(0.0) == 1 and level(1.0) == 101 and level(math.nan) == 1 and level(7) == 101


def test_dense_heatmap_is_one_image_with_every_cell_coloured_by_its_value():
    vals = [[0.1, None, 0.3], [0.2, 0.5, None]]
    text = dense_heatmap(
        vals, [("L1", 2)], [("L0", 2), ("L1", 1)], EVIL, 0.1, 0.5, title=EVIL, src="c", key="q"
    )
    root = svg(text)  # well-formed: the title and label are escaped
    assert EVIL in root.attrib["aria-label"]
    assert not root.findall(".//s:rect[@class='cell']", NS) and not root.findall(".//s:title", NS)
    (img,) = root.findall(".//s:image", NS)
    rows, palette, _ = read_png(png_of(img.attrib["href"]))
    assert rows == [[level(0.0), 0, level(0.5)], [level(0.25), level(1.0), 0]]
    assert palette[level(1.0)] == blend(1.0)
    g = root.find(".//s:g[@data-grid]", NS)
    assert (g.attrib["data-grid"], g.attrib["data-src"]) == ("q", "c")
    ticks_ = [t.text for t in root.findall(".//s:text[@class='tick']", NS)]
    assert {"L0", "L1", "0.100", "0.500", "not defined"} <= set(ticks_)
