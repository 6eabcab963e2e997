"""Notebook views: each record's `_repr_html_` renders offline (no host named, no external
script or style) and escapes every token and name, with hostile strings planted."""

from __future__ import annotations

import dataclasses
import json
import re
from html.parser import HTMLParser

import pytest
import torch

import qkov
from factories import random_model
from qkov.classification import classify_heads
from qkov.notebook import AttentionPatterns, attention, head_classification_html
from qkov.paths import PathExpansion, PathTerm, path_expansion
from qkov.report import widgets
from qkov.trigrams import SkipTrigram, SkipTrigramTable, skip_trigrams

HOSTILE = '<script>window.__pwned=1</script>"><img src=x onerror=alert(1)>'


class _Tags(HTMLParser):
    """Every start tag and its attributes, and every script's text."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.scripts: list[tuple[str, str]] = []  # (type, text)
        self._script: str | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._script = (dict(attrs).get("type") or "text/javascript") if tag == "script" else None

    def handle_endtag(self, tag):
        self._script = None

    def handle_data(self, data):
        if self._script is not None:
            self.scripts.append((self._script, data))


def check_html(html: str) -> _Tags:
    """Offline and escaped: no img or iframe, no src/href to anywhere, no planted markup."""
    p = _Tags()
    p.feed(html)
    names = [t for t, _ in p.tags]
    assert "img" not in names and "iframe" not in names and "link" not in names
    for tag, attrs in p.tags:
        if tag == "image":  # a raster heatmap: a PNG inside the page, never a fetched file
            assert attrs.pop("href").startswith("data:image/png;base64,")
        assert "src" not in attrs and "href" not in attrs, (tag, attrs)
        assert not any(k.startswith("on") for k in attrs), (tag, attrs)
    for kind, text in p.scripts:  # the hover script, and JSON data that cannot close its block
        if kind == "application/json":
            assert "<" not in text and ">" not in text
        else:
            assert "__pwned" not in text and "alert(1)" not in text
    assert "<script>window.__pwned" not in html and "<img" not in html
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", html)
    return p


def test_attention_patterns(tmp_path):
    model = qkov.load(qkov.shipped("attn1"))
    view = attention(model, "import os\nimport os\n")
    assert isinstance(view, AttentionPatterns)
    H, n = model.cfg.n_heads, len(view.tokens)
    assert view.pattern.shape == (1, H, n, n)
    torch.testing.assert_close(view.pattern.sum(-1), torch.ones(1, H, n))
    html = view._repr_html_()
    check_html(html)
    assert "import" in html
    # hostile tokens
    n = 3
    hostile = AttentionPatterns([HOSTILE, "a", "</script>"], torch.full((1, 1, n, n), 1 / n))
    html = hostile._repr_html_()
    check_html(html)
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in html
    # inside the JSON data block no string can close the script
    assert html.count("</script>") == html.count("<script")


def test_head_classification():
    model = random_model(2, n_heads=2, n_ctx=16)
    cls = classify_heads(model, batch=4, n_baseline=20)
    html = cls._repr_html_()
    check_html(html)
    assert html.count("<tr>") >= 4 and "L1H1" in html
    # a planted hostile label is escaped
    bad = dataclasses.replace(cls.records[0], label=HOSTILE)
    html = dataclasses.replace(cls, records=(bad,) + cls.records[1:])._repr_html_()
    check_html(html)
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in html


def test_path_expansion():
    model = random_model(2, n_heads=2)
    tokens = torch.arange(model.cfg.n_ctx)[None] % model.cfg.d_vocab
    pe = path_expansion(model, tokens)
    html = pe._repr_html_()
    check_html(html)
    assert "L0H1&gt;L1H0" in html and "direct" in html
    assert f"{len(pe.terms)} terms" in html
    bad = PathExpansion(
        terms=[PathTerm((), HOSTILE, pe.logits)], logits=pe.logits, patterns=pe.patterns
    )
    html = bad._repr_html_()
    check_html(html)
    assert "&lt;script&gt;" in html


def test_skip_trigrams():
    model = qkov.load(qkov.shipped("attn1"))
    table = skip_trigrams(model, 0, 1, k=5)
    assert isinstance(table, SkipTrigramTable) and isinstance(table, list) and len(table) == 5
    html = table._repr_html_()
    check_html(html)
    assert html.count("<tr>") == 6
    t = SkipTrigram(1, 2, 3, 0.5, 0.1, 0.2, HOSTILE, "</td>", "\n")
    html = SkipTrigramTable([t])._repr_html_()
    check_html(html)
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in html and "&lt;/td&gt;" in html


@pytest.mark.parametrize("text", ["", "x = 1\n" * 300])
def test_attention_refuses_what_the_model_cannot_read(text):
    model = qkov.load(qkov.shipped("attn1"))
    with pytest.raises(qkov.QkovError):
        attention(model, text)


def test_a_model_without_layers_has_no_attention_to_show():
    """attn0 (0 layers): the view says so in one line (it raised a torch stack error);
    `attention_patterns` gives an empty [0, batch, head, dest, src]."""
    from qkov.heads import attention_patterns

    model = qkov.load(qkov.shipped("attn0"))
    with pytest.raises(qkov.QkovError, match="0 layers: it has no heads"):
        attention(model, "def f(x):\n    return x\n")
    tokens = torch.tensor([[1, 2, 3]])
    assert attention_patterns(model, tokens).shape == (0, 1, model.cfg.n_heads, 3, 3)


def test_attention_many_heads_draws_every_head_compactly():
    """GPT-2's 144 heads on a long text: every head is in the menu and drawn as one small
    image (not 16 heads, silently, as thousands of rects and 100 MB); the weights embedded
    are the causal rows of the first tokens, as the note says, and equal the record's."""
    L, H, n = 12, 12, 300
    torch.manual_seed(0)
    mask = torch.ones(n, n).tril().bool()
    pattern = torch.randn(L, H, n, n).masked_fill(~mask, -torch.inf).softmax(-1)
    view = AttentionPatterns([f"t{i}" for i in range(n)], pattern)
    html = view._repr_html_()
    p = check_html(html)
    assert len(html) < 3_000_000
    assert html.count("<option") == L * H and "L11H11" in html
    assert html.count("<image") == L * H and html.count("<rect") <= L * H
    data = json.loads(next(t for kind, t in p.scripts if kind == "application/json"))
    shown = len(data["tokens"])
    assert shown == 64 and L * H * shown * (shown + 1) // 2 <= widgets.MAX_WEIGHTS
    assert f"144 heads on {n} tokens; the first {shown} tokens are drawn" in html
    rows = data["patterns"]["5.3"]
    assert [len(r) for r in rows] == list(range(1, shown + 1))
    for i in (0, 10, shown - 1):
        assert rows[i] == pytest.approx(pattern[5, 3, i, : i + 1].tolist(), abs=6e-4)
    # a few heads on a short text: every token, every cell a rect, as before
    small = AttentionPatterns(["a", "b", "c"], pattern[:1, :2, :3, :3])._repr_html_()
    assert "<image" not in small and "2 heads on 3 tokens." in small


def test_head_table_of_many_heads_scrolls_in_its_own_box():
    rows = [
        {"layer": l, "head": h, "label": "other", "scores": {"induction": 0.1}}
        for l in range(12)
        for h in range(12)
    ]
    html = head_classification_html(rows)
    check_html(html)
    assert 'class="wide tall"' in html and html.count("<tr>") == 144 + 2
    assert 'class="wide tall"' not in head_classification_html(rows[:4])


def test_path_expansion_error_bound_is_not_rounded_away():
    logits = torch.zeros(1, 2, 5)
    pe = PathExpansion(terms=[PathTerm((), "direct", logits + 0.0043)], logits=logits, patterns=[])
    html = pe._repr_html_()
    bound = float(re.search(r"logits\| \u2264 ([0-9.e+-]+)", html).group(1))
    assert bound >= pe.max_abs_error() > 0.004


def test_fragment_styles_what_the_views_draw():
    """The notebook has no report.css: the fragment's own style lays heatmaps side by side
    and colours the bars (else: one heatmap a line, black bars)."""
    css = widgets.FRAGMENT_CSS.replace("\n", " ")
    assert re.search(r"\.qkov \.plots \{[^}]*display: flex", css)
    assert re.search(r"\.qkov svg \.bar\.pos \{[^}]*fill:", css)
    assert re.search(r"\.qkov figure \{[^}]*margin: 0", css)
