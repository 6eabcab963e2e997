"""report/svg.py and report/fmt.py: scales, ticks, number formats, escaping, empty and NaN
inputs. Plots are read back by parsing the SVG they return."""

from __future__ import annotations

import math
import re
from xml.etree import ElementTree as ET

import pytest

from qkov.report.fmt import count, num, si
from qkov.report.svg import (
    circuit_diagram,
    complex_scatter,
    hbar_chart,
    line_chart,
    ticks,
    y_range,
)

NS = {"s": "http://www.w3.org/2000/svg"}
EVIL = '<script>alert(1)</script>"&'


def svg(text: str) -> ET.Element:
    """Parse a plot; it must be well-formed XML (an unescaped label would break it)."""
    return ET.fromstring(text)


# ---------------------------------------------------------------------------- numbers
@pytest.mark.parametrize(
    "x, text",
    [
        (0.2, "0.200"),
        (1, "1.000"),
        (6.85e-4, "0.001"),  # fixed decimals, never 6.85e-04
        (4.2e-4, "0.000"),  # rounds to zero: still three decimals (columns align)
        (-3.1e-5, "0.000"),  # no "-0.000"
        (-6e-4, "-0.001"),
        (1e-12, "0.000"),
        (-0.0, "0.000"),
        (2.4301, "2.430"),
        (65_536.0, "65.5k"),
        (None, "\u2013"),
        (math.nan, "\u2013"),
        (math.inf, "\u2013"),
        ("x", "\u2013"),
    ],
)
def test_num_is_fixed_decimals(x, text):
    assert num(x) == text
    assert "e" not in num(x)


def test_num_signed_and_digits():
    assert num(0.98, signed=True) == "+0.980" and num(-0.5, signed=True) == "-0.500"
    assert num(0.0, signed=True) == "0.000"
    assert num(0.31, 2) == "0.31" and num(3, 0) == "3"


def test_si_and_count():
    assert [si(x) for x in (0, 250, 1500, 4e6, 16e6, 65.5e6, 2e9)] == [
        "0",
        "250",
        "1.5k",
        "4M",
        "16M",
        "65.5M",
        "2B",
    ]
    assert count(65536) == "65,536" and count(None) == "\u2013"


# ---------------------------------------------------------------------------- ticks and ranges
@pytest.mark.parametrize(
    "lo, hi", [(0, 1), (2.4, 10.8), (-1.2, 0.0), (0, 32e6), (0.001, 0.0013), (-7, 130)]
)
def test_ticks_are_round_and_inside(lo, hi):
    t = ticks(lo, hi)
    assert 3 <= len(t) <= 11
    assert all(lo - 1e-9 <= v <= hi + 1e-9 for v in t)
    steps = {round(b - a, 12) for a, b in zip(t, t[1:], strict=False)}
    assert len(steps) == 1
    step = steps.pop()
    mantissa = step / 10 ** math.floor(math.log10(step))
    assert round(mantissa, 6) in (1, 2, 5)


def test_ticks_degenerate():
    assert ticks(3, 3) == [3] and ticks(3, 1) == [3] and ticks(math.nan, 1) == []


def test_y_range_covers_every_value():
    lo, hi = y_range([10.8, 5.0, 2.4, None, math.nan, 2.45], pad=0.05)
    assert (lo, hi) == pytest.approx((2.4 - 0.42, 10.8 + 0.42))
    assert y_range([1.0, 1.0]) == (0.5, 1.5)
    assert y_range([]) == (0.0, 1.0)


# ---------------------------------------------------------------------------- line chart
def _frame_and_lines(text: str):
    root = svg(text)
    frame = root.find("s:rect[@class='frame']", NS)
    top, h = float(frame.get("y")), float(frame.get("height"))
    left, w = float(frame.get("x")), float(frame.get("width"))
    lines = [
        [tuple(map(float, p.split(","))) for p in pl.get("points").split()]
        for pl in root.findall("s:polyline", NS)
    ]
    return root, (left, top, w, h), lines


def test_line_chart_y_range_includes_every_point():
    """The train loss starts near ln(vocab) far above the rest; no point may leave the frame
    (the clipped train-loss line of issue 12)."""
    series = {
        "train_loss": [[0, 10.8], [4e6, 5.0], [8e6, 3.1], [32e6, 2.4]],
        "val_loss": [[4e6, 5.05], [32e6, 2.45]],
        "probe_icl_score": [[0, -0.1], [32e6, -1.2]],
    }
    root, (left, top, w, h), lines = _frame_and_lines(
        line_chart(series, "loss", "tokens seen", "nats")
    )
    assert [len(line) for line in lines] == [4, 2, 2]
    ys = [y for line in lines for _, y in line]
    xs = [x for line in lines for x, _ in line]
    assert all(top - 0.05 <= y <= top + h + 0.05 for y in ys), (ys, top, h)
    assert all(left - 0.05 <= x <= left + w + 0.05 for x in xs)
    # the extremes sit at or inside the frame edge: the top value 10.8 is drawn, not cut
    assert min(ys) >= top and max(ys) <= top + h
    assert min(ys) < top + 0.05 * h and max(ys) > top + 0.95 * h  # ...and not squashed


def test_line_chart_x_ticks_in_tokens():
    text = line_chart({"a": [[0, 1.0], [32e6, 2.0]]}, "x", "tokens seen", "y")
    labels = [t.text for t in svg(text).findall("s:text", NS)]
    assert {"0", "10M", "20M", "30M", "tokens seen"} <= set(labels)
    ylabels = [t.text for t in svg(text).findall("s:text[@text-anchor='end']", NS)]
    assert "1.0" in ylabels and "2.0" in ylabels  # decimals follow the tick step


def test_line_chart_counts_whole_checkpoints():
    """x_integer (checkpoints in the order given, training steps): no tick between two
    whole values, where a third checkpoint at 1.5 would be drawn."""
    series = {"a": [[1, 1.0], [2, 2.0], [3, 1.5]]}
    labels = lambda text: re.findall(r'text-anchor="middle">([^<]*)</text>', text)  # noqa: E731
    assert "1.5" in labels(line_chart(series, "x", "checkpoint", "y", x_format=str))
    whole = labels(line_chart(series, "x", "checkpoint", "y", x_format=str, x_integer=True))
    assert whole[:3] == ["1.0", "2.0", "3.0"] and "1.5" not in whole


def test_line_chart_gaps_empty_and_nan():
    text = line_chart({"a": [[0, 1.0], [1, None], [2, 2.0], [3, 2.5]]}, "x", "t", "y")
    _, _, lines = _frame_and_lines(text)
    assert [len(line) for line in lines] == [1, 2]  # None breaks the line
    assert svg(text).findall("s:circle", NS)  # a lone point is still drawn
    assert line_chart({}, "x", "t", "y") == ""
    # a series with nothing to draw is left out of the legend too
    with_empty = line_chart({"a": [[0, 1.0], [1, 2.0]], "unmeasured": [[0, None]]}, "x", "t", "y")
    assert "unmeasured" not in with_empty and ">a<" in with_empty
    assert line_chart({"a": [[0, math.nan], [1, None]]}, "x", "t", "y") == ""


def test_line_chart_band_and_escaped_legend():
    text = line_chart({EVIL: [[0, 1.0], [10, 2.0]]}, EVIL, EVIL, EVIL, band=(2, 4))
    root = svg(text)
    band = root.find("s:rect[@class='band']", NS)
    frame = root.find("s:rect[@class='frame']", NS)
    x0, w = float(frame.get("x")), float(frame.get("width"))
    assert float(band.get("x")) == pytest.approx(x0 + 0.2 * w, abs=0.1)
    assert float(band.get("width")) == pytest.approx(0.2 * w, abs=0.1)
    assert "<script>" not in text and EVIL in [t.text for t in root.iter() if t.text]


# ---------------------------------------------------------------------------- other plots
def test_complex_scatter_scale_and_nan():
    root = svg(complex_scatter([[2.0, 0.0], [-1.0, 0.0], [math.nan, 0.0], None], EVIL, size=170))
    unit = root.find("s:circle[@class='unit']", NS)
    cx, r = float(unit.get("cx")), float(unit.get("r"))
    pts = root.findall("s:circle[@r='3']", NS)
    assert len(pts) == 2  # the NaN and None points are left out
    assert float(pts[0].get("cx")) == pytest.approx(cx + r, abs=0.1)  # largest |lambda| on it
    assert float(pts[1].get("cx")) == pytest.approx(cx - r / 2, abs=0.1)
    assert [p.get("class") for p in pts] == ["eig pos", "eig neg"]
    assert root.get("aria-label").startswith(EVIL)
    empty = complex_scatter([], "none")
    assert "no eigenvalues" in empty and svg(empty) is not None


def test_hbar_chart_signs_nan_and_escaping():
    text = hbar_chart([(EVIL, 2.0), ("b", -1.0), ("c", math.nan), ("d", None)], EVIL, " nats")
    root = svg(text)
    bars = root.findall("s:rect", NS)
    assert [b.get("class") for b in bars] == ["bar pos", "bar neg"]
    assert float(bars[0].get("width")) == pytest.approx(2 * float(bars[1].get("width")), 0.01)
    assert [t.text for t in root.findall("s:text", NS)].count("n/a") == 2
    assert "2.000 nats" in [t.text for t in root.findall("s:text", NS)]
    assert svg(hbar_chart([], "empty")) is not None


def test_circuit_diagram_uses_label_spelling():
    text = circuit_diagram((0, 3), (1, 0), 0.31, 0.91, 0.62, prev_label=EVIL)
    labels = [t.text for t in svg(text).findall("s:text", NS)]
    assert f"label: {EVIL}" in labels and "label: induction" in labels
    assert "previous_token 0.910" in labels and "0.310" in labels
    assert not re.search(r"previous-token", text)


def test_complex_scatter_compact_draws_every_point_as_a_dot():
    eigs = [[1.0, 0.5], [-0.5, 0.2], [0.3, -0.1], [math.nan, 0.0]]
    root = svg(complex_scatter(eigs, EVIL, compact=True))
    assert not root.findall(".//s:circle[@class]", NS) or all(
        "eig" not in c.attrib.get("class", "") for c in root.findall(".//s:circle", NS)
    )
    paths = {p.attrib["class"]: p.attrib["d"] for p in root.findall(".//s:path", NS)}
    assert paths["eig dots pos"].count("h0") == 2 and paths["eig dots neg"].count("h0") == 1
