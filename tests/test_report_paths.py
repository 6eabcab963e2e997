"""The report's sections on paths (report/paths.py): QK terms, virtual heads' OV, positional QK,
attribution, and the head cards' token-split trigrams; drawn from data, hostile text inert."""

from __future__ import annotations

import json
import re

import pytest

from qkov.report import render_report
from qkov.report.escape import visible_token
from report_fixture import ATTRIBUTION_TOKENS, HOSTILE, v2_analysis
from report_html import tree
from test_report import build_analysis


@pytest.fixture(scope="module")
def page() -> str:
    return render_report(v2_analysis())


def test_new_sections_render_from_the_fixture(page):
    t = tree(page)
    qk = t.by_id("m0-qk-terms")
    assert "K-composition" in qk.text and "token \u00b7 L0H0" in page
    assert len(qk.all("svg")) == 2  # kinds and terms of the one head given
    rows = t.by_id("m0-virtual-heads").all("tr")
    assert [r.all("td")[0].text for r in rows[1:]] == ["L0H1>L1H1", "L0H0>L1H0"]
    assert rows[1].all("td")[2].text == "+0.812"
    assert len(t.by_id("m0-positional-qk").all("svg")) == 2  # one per layer-0 head
    card = t.by_id("m0-L1H0")
    assert "5 of 12 favoured" in card.text
    assert " Ralph" in [c.text for c in card.all("td", "tc")]


def test_attribution_view_keeps_hostile_text_as_text(page):
    section = tree(page).by_id("m0-attribution")
    spans = section.all("span", "tok")
    assert [s.text for s in spans] == [visible_token(x) for x in ATTRIBUTION_TOKENS]
    selected = re.search(r'<option value="(\d+)" selected>([^<]*)</option>', page)
    assert selected.group(2) == "L0H0"  # the first head path is coloured at first
    block = re.search(r'<script type="application/json" id="attrib-m0">(.*?)</script>', page, re.S)
    assert "<" not in block.group(1)  # no string can close the data block
    data = json.loads(block.group(1))
    assert data["tokens"][3] == HOSTILE[0] and data["paths"][3] == "L1H0"
    for h in HOSTILE[:2]:
        assert h not in page.split("<main>")[1].replace(block.group(1), "")


def test_sections_say_not_computed_without_data():
    analysis = v2_analysis()
    m = analysis["models"][0]
    for key in ("qk_terms", "virtual_heads", "positional_qk", "attribution"):
        m.pop(key)
    m["not_computed"]["positional_qk"] = "positional='none': no W_pos"
    t = tree(render_report(analysis))
    assert "no W_pos" in t.by_id("m0-positional-qk").text
    assert "Not computed" in t.by_id("m0-attribution").text


def test_analyze_writes_exact_paths_data(tmp_path):
    analysis = build_analysis(tmp_path)
    m2 = analysis["models"][0]
    assert m2["attribution"]["max_abs_error"] <= 1e-4
    assert len(m2["attribution"]["contributions"]) == len(m2["attribution"]["tokens"]) - 1
    assert all(h["max_abs_error"] <= 1e-4 for h in m2["qk_terms"])
    assert len(m2["qk_terms"]) == 4 and len(m2["virtual_heads"]) == 4
    assert len(m2["positional_qk"]) == 2
    assert all("split_token_trigrams" in h for h in m2["heads"])
    render_report(analysis)  # draws without error


def test_positional_qk_says_when_a_map_is_flat():
    """A map whose entries are all one value (a random model's, rounded to 0.000 in
    analysis.json) draws blank: the section says so, and that each map has its own scale."""
    a = v2_analysis()
    page = render_report(a)
    section = tree(page).by_id("m0-positional-qk")
    assert "its own smallest (white) to its largest" in section.text
    assert not section.all("p", "flat")
    a["models"][0]["positional_qk"][1]["scores"] = [[0.0] * 6 for _ in range(6)]
    flat = tree(render_report(a)).by_id("m0-positional-qk").all("p", "flat")
    assert len(flat) == 1 and "the map of L0H1 has one value (0.000)" in flat[0].text
    for entry in a["models"][0]["positional_qk"]:
        entry["scores"] = [[0.0] * 6 for _ in range(6)]
    flat = tree(render_report(a)).by_id("m0-positional-qk").all("p", "flat")
    assert "Every entry of each map has one value (0.000)" in flat[0].text


@pytest.mark.parametrize("key", ["budget", "scale"])
def test_attribution_menu_groups_paths_by_their_recorded_order(key):
    """With the orders analysis.json records (analyze writes them), the path menu groups
    its options by order, the remainder named for what it holds; each option keeps its
    index, so the page's colouring reads the same column. The cut is read from "budget",
    or from "scale" in a file written before 2026-12-06."""
    analysis = v2_analysis()
    att = analysis["models"][0]["attribution"]
    att["orders"] = [len(p.split(">")) if p.startswith("L") else 0 for p in att["paths"]]
    analysis["models"][0][key] = {"path_max_order": 2}
    att["paths"].append("order>2")  # as a cut at 2 names its remainder
    att["orders"].append(3)
    for row in att["contributions"]:
        row.append(0.0)
    section = tree(render_report(analysis)).by_id("m0-attribution")
    groups = section.all("optgroup")
    assert [g.attrs["label"] for g in groups] == [
        "order 0: no head (direct path, biases, MLPs)",
        "order 1: single heads",
        "order 2: chains of 2 heads (virtual heads)",
        "the remainder: every path through more than 2 heads",
    ]
    shown = [(o.attrs["value"], o.text) for g in groups for o in g.all("option")]
    assert sorted(int(v) for v, _ in shown) == list(range(len(att["paths"])))
    assert all(att["paths"][int(v)] == name for v, name in shown)
