"""The report stays readable with GPT-2 small's 144 heads: sorted by label and deciding
score, the top cards open, the rest folded (a small change to the head section)."""

from __future__ import annotations

import random

from qkov.report.sections import EXPANDED_HEADS, heads_section
from report_fixture import _head, v2_analysis


def test_144_heads_sorted_by_role_and_score_rest_folded():
    m = v2_analysis()["models"][0]
    rng = random.Random(0)
    labels = ["other", "induction", "previous_token", "copying"]
    m["heads"] = [
        _head(l, h, rng.choice(labels), {s: rng.random() for s in labels[1:]}, None, 0.5)
        for l in range(12)
        for h in range(12)
    ]
    html = heads_section(m, None, "m0")
    cards_open, _, folded = html.partition("<details>")
    names = [f"L{h['layer']}H{h['head']}" for h in m["heads"]]
    assert cards_open.count("head-card") == EXPANDED_HEADS
    assert folded.count("head-card") == 144 - EXPANDED_HEADS
    # Open cards: previous-token heads first (LABELS order), highest score first.
    previous = sorted(
        (h for h in m["heads"] if h["label"] == "previous_token"),
        key=lambda h: -h["scores"]["previous_token"],
    )
    first = [f"L{h['layer']}H{h['head']}" for h in previous[:3]]
    positions = [cards_open.index(f'id="m0-{n}"') for n in first]
    assert positions == sorted(positions) and all(n in names for n in first)
    # Every unlabelled head is folded.
    assert all(
        f'id="m0-L{h["layer"]}H{h["head"]}"' in folded for h in m["heads"] if h["label"] == "other"
    )
