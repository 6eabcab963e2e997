"""report/ and analyze: escaping, self-containment, schema, and the analysis of real models.

The analysis is built by `qkov.analyze` from small random models whose tokenizer holds
hostile token strings, so the tests exercise the real pipeline, not a hand-made dict."""

from __future__ import annotations

import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers

import qkov
from qkov.analyze import analyze, read_metrics, top_bigrams, write_analysis
from qkov.errors import QkovError
from qkov.report import (
    SCHEMA_VERSION,
    attention_html,
    eigenvalues_html,
    head_table_html,
    jsonable,
    render_report,
    script_json,
)
from qkov.report.escape import visible_token

# Each would run or fetch something if it reached the page unescaped.
HOSTILE = [
    "<script>window.__pwned=1</script>",
    '"><img src=x onerror="window.__pwned=2">',
    "</script><script>window.__pwned=3</script>",
    "<!--",
    "&amp;",
    "\u2028",
    "'onmouseover='window.__pwned=4",
]


def make_model(n_layers: int, out: Path | None = None, seed: int = 0) -> qkov.AttnOnlyTransformer:
    """A tiny random model whose word-level tokenizer has the hostile strings as tokens."""
    words = HOSTILE + [f"w{i}" for i in range(64 - len(HOSTILE))]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    cfg = qkov.ModelConfig(
        n_layers=n_layers,
        n_heads=2,
        d_model=32,
        n_ctx=64,
        d_vocab=len(words),
        init_std=0.3,
        seed=seed + n_layers,
    )
    model = qkov.AttnOnlyTransformer(cfg)
    model.tokenizer = tok
    if out is not None:
        qkov.save_model(model, out)
        lines = [
            json.dumps(
                {
                    "step": s,
                    "train_loss": 4 - s / 300,
                    "val_loss": 4.2 - s / 320,
                    "lr": 1e-3,
                    "induction_score": min(1.0, s / 400),
                    "prev_token_score": 0.6,
                    "icl_score": -s / 300,
                }
            )
            for s in range(0, 600, 100)
        ]
        (out / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 6', encoding="utf-8")
    return model


SAMPLE = " ".join(HOSTILE + ["w1", "w2", "w3"]) + " " + " ".join(HOSTILE + ["w1", "w2", "w3"])


def build_analysis(root: Path) -> dict:
    """Analysis of saved 2-, 0- and 1-layer random models (the demo's shape)."""
    dirs = []
    for n in (2, 0, 1):
        d = root / f"{n}L"
        make_model(n, d)
        dirs.append(d)
    return analyze(dirs, text=SAMPLE, log=None)


@pytest.fixture(scope="module")
def analysis(tmp_path_factory) -> dict:
    return build_analysis(tmp_path_factory.mktemp("report-models"))


@pytest.fixture(scope="module")
def html(analysis) -> str:
    return render_report(analysis)


class _Tags(HTMLParser):
    """Every start tag with its attributes, and the text inside <script> elements."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[tuple[dict, str]] = []
        self._in_script: dict | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "script":
            self._in_script = dict(attrs)
            self.scripts.append((self._in_script, ""))

    def handle_data(self, data):
        if self._in_script is not None:
            attrs, text = self.scripts[-1]
            self.scripts[-1] = (attrs, text + data)

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = None


def parse(html: str) -> _Tags:
    p = _Tags()
    p.feed(html)
    return p


# ---------------------------------------------------------------------------- escaping
def test_script_json_cannot_close_its_block():
    data = {"t": HOSTILE + ["</SCRIPT>", "<!--<script>"], "n": [1.5, None]}
    text = script_json(data)
    assert "<" not in text and ">" not in text and "&" not in text
    assert "\u2028" not in text and "\u2029" not in text
    assert json.loads(text) == data


def test_jsonable_makes_strict_json():
    out = jsonable(
        {
            "a": float("nan"),
            "b": torch.tensor([1.0, float("inf")]),
            "c": (1, 2),
            "z": torch.tensor([1 + 2j]),
        }
    )
    assert out == {"a": None, "b": [1.0, None], "c": [1, 2], "z": [[1.0, 2.0]]}
    json.dumps(out, allow_nan=False)


def test_visible_token_shows_whitespace_and_controls():
    assert visible_token("a\nb") == "a\u21b5b"
    assert visible_token(" ") == "\u2423"
    assert visible_token("\x00") == "\\x00"
    assert visible_token("\ud800x") == "\ufffdx"  # lone surrogate cannot be UTF-8
    assert visible_token("") == "\u2205"


def test_hostile_tokens_are_text_not_markup(analysis, html):
    tokens = analysis["models"][0]["attention"]["tokens"]
    assert HOSTILE[0] in tokens  # the hostile strings did reach the analysis
    for bad in HOSTILE[:4]:
        assert bad not in html
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in html
    p = parse(html)
    executable = [a for a, _ in p.scripts if a.get("type") != "application/json"]
    assert len(executable) == 1  # only the page's own script
    assert not [t for t, _ in p.tags if t == "img"]
    for tag, attrs in p.tags:
        assert not any(k.startswith("on") for k in attrs), (tag, attrs)
        assert "style" not in attrs, (tag, attrs)  # would need 'unsafe-inline' under the CSP
    for attrs, text in p.scripts:
        if attrs.get("type") == "application/json":
            json.loads(text)  # each data block parses back whole


def test_report_is_self_contained(html):
    p = parse(html)
    for tag, attrs in p.tags:
        for key in ("src", "href", "action", "formaction", "poster", "data"):
            value = (attrs.get(key) or "").strip()
            if value:
                assert value.startswith(("#", "data:")), (tag, key, value)
    # The only URL is the SVG namespace name (an identifier, never fetched).
    urls = set(re.findall(r"https?://[^\s\"'<>]+", html))
    assert urls <= {"http://www.w3.org/2000/svg"}, urls
    for needle in (
        "@import",
        "@font-face",
        "url(",
        "fetch(",
        "XMLHttpRequest",
        "WebSocket",
        ".innerHTML",
        "eval(",
    ):
        assert needle not in html


def test_csp_hashes_admit_exactly_the_page_assets(html):
    import base64
    import hashlib

    p = parse(html)
    csp = next(
        a["content"]
        for t, a in p.tags
        if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"
    )
    script = next(t for a, t in p.scripts if a.get("type") != "application/json")
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in csp
    assert "default-src 'none'" in csp and "unsafe-inline" not in csp


# ---------------------------------------------------------------------------- content
def test_analysis_covers_every_section(analysis):
    assert analysis["schema_version"] == SCHEMA_VERSION
    m2, m0, m1 = analysis["models"]
    assert [m["config"]["n_layers"] for m in (m2, m0, m1)] == [2, 0, 1]
    assert len(m2["heads"]) == 4 and len(m1["heads"]) == 2 and "heads" not in m0
    h = m2["heads"][0]
    assert len(h["ov_eigenvalues"]) == 16 and len(h["qk_eigenvalues"]) == 16
    assert -1 <= h["copying"] <= 1 and h["skip_trigrams"]
    comp = m2["composition"]
    k = torch.tensor(
        jsonable(comp["k"])
        and [[[[math.nan if v is None else v for v in c] for c in b] for b in a] for a in comp["k"]]
    )
    assert k.shape == (2, 2, 2, 2)  # [l_earlier, h_earlier, l_later, h_later]
    assert k[0, :, 1].isfinite().all() and k[1].isnan().all() and k[:, :, 0].isnan().all()
    assert set(comp["baseline"]) == {"q", "k", "v"}
    orders = [t for t in m2["term_importance"]["terms"] if t["kind"] == "order"]
    assert [t["order"] for t in orders] == [0, 1, 2]
    series = m2["training"]["series"]
    assert {"val_loss", "induction_score", "icl_score"} <= set(series) and "lr" not in series
    assert m2["val_loss"] == {"value": 4.2 - 500 / 320, "step": 500}
    att = m2["attention"]
    n = len(att["tokens"])
    rows = torch.tensor(att["patterns"])  # [layer, head, dest, src]
    assert rows.shape == (2, 2, n, n)
    assert torch.allclose(rows.sum(-1), torch.ones(2, 2, n), atol=1e-3)
    assert all(math.isfinite(m["loss"]["value"]) for m in analysis["models"])


def test_report_draws_each_section(analysis, html):
    assert html.count('class="card head-card"') == 4 + 2
    assert html.count("<figure>") >= 6
    for text in (
        "Loss side by side",
        "Direct path: bigram table",
        "Composition (Q / K / V)",
        "Term importance",
        "Training curve",
        "K-composition",
    ):
        assert text in html
    assert "induction" in html  # the circuit section, found or "No induction head found"


def test_missing_sections_say_not_computed():
    a = {
        "schema_version": SCHEMA_VERSION,
        "models": [
            {
                "name": "bare",
                "config": {"n_layers": 2, "n_heads": 1},
                "not_computed": {"composition": "qkov.composition failed"},
            }
        ],
    }
    html = render_report(a)
    assert html.count("Not computed") >= 5
    assert "qkov.composition failed" in html


def test_schema_errors_are_qkov_errors():
    with pytest.raises(QkovError, match="schema_version"):
        render_report({"models": []})
    with pytest.raises(QkovError, match="regenerate"):
        render_report({"schema_version": 999, "models": [{"config": {}}]})
    with pytest.raises(QkovError, match="no models"):
        render_report({"schema_version": SCHEMA_VERSION, "models": []})


def test_write_analysis_round_trips(analysis, tmp_path):
    json_path, html_path = write_analysis(tmp_path / "out", analysis)
    text = json_path.read_text(encoding="utf-8")

    def no_nan(x):
        raise AssertionError(f"analysis.json holds {x}")

    back = json.loads(text, parse_constant=no_nan)
    assert render_report(back) == html_path.read_text(encoding="utf-8")
    (tmp_path / "file").write_text("x")
    with pytest.raises(QkovError, match="not a directory"):
        write_analysis(tmp_path / "file", analysis)


def test_top_bigrams_match_dense_table():
    model = make_model(0)
    got = top_bigrams(model, k=5)
    table = model.W_E.detach() @ model.W_U.detach()
    table = table - table.mean(dim=1, keepdim=True)
    vals, idx = table.flatten().topk(5)
    V = model.cfg.d_vocab
    tok = model.tokenizer
    want = [(tok.decode([int(i) // V]), tok.decode([int(i) % V])) for i in idx]
    assert [(g["source"], g["out"]) for g in got] == want
    assert torch.allclose(torch.tensor([g["logit"] for g in got]), vals, atol=1e-5)


def test_read_metrics_skips_torn_line(tmp_path):
    p = tmp_path / "metrics.jsonl"
    p.write_text('{"step": 1, "train_loss": 2.0}\n{"step": 2, "val_loss": 1.5}\n{"step": 3, "tr')
    series, val = read_metrics(p)
    assert series == {"series": {"train_loss": [[1, 2.0]], "val_loss": [[2, 1.5]]}}
    assert val == {"value": 1.5, "step": 2}
    assert read_metrics(tmp_path / "missing.jsonl") == (None, None)


def test_analyze_in_memory_model_without_tokenizer():
    model = qkov.AttnOnlyTransformer(
        qkov.ModelConfig(n_layers=1, n_heads=2, d_model=16, n_ctx=16, d_vocab=40)
    )
    a = analyze(model, log=None)
    m = a["models"][0]
    assert m["name"] == "1L" and m["attention"]["source"].startswith("repeated random")
    assert m["not_computed"]["training"]
    assert "Not computed" in render_report(a)


# ---------------------------------------------------------------------------- notebook views
def test_notebook_views_escape_tokens():
    pattern = torch.softmax(torch.randn(2, len(HOSTILE), len(HOSTILE)), -1).tril()
    views = [
        attention_html(HOSTILE, pattern),
        head_table_html([{"layer": 0, "head": 1, "role": HOSTILE[1], "scores": {"x": 0.5}}]),
        eigenvalues_html(torch.tensor([1 + 1j, -0.5 + 0j]), label=HOSTILE[0]),
    ]
    for v in views:
        for bad in HOSTILE[:3]:
            assert bad not in v
        assert "http://" not in v.replace('xmlns="http://www.w3.org/2000/svg"', "")
    stat = (1 - 0.5) / (math.sqrt(2) + 0.5)  # sum(Re lambda) / sum(|lambda|)
    assert f"\u03a3\u03bb/\u03a3|\u03bb| = {stat:.3f}" in views[2]


# ---------------------------------------------------------------------------- CLI
def test_cli_analyze(tmp_path, capsys):
    from qkov.cli import main

    d = tmp_path / "m1"
    make_model(1, d)
    text = tmp_path / "sample.txt"
    text.write_text(SAMPLE, encoding="utf-8")
    assert (
        main(
            [
                "analyze",
                str(d),
                "--out",
                str(tmp_path / "out"),
                "--text-file",
                str(text),
                "--n-trigrams",
                "3",
            ]
        )
        == 0
    )
    assert "report.html" in capsys.readouterr().out
    a = json.loads((tmp_path / "out" / "analysis.json").read_text(encoding="utf-8"))
    assert len(a["models"][0]["heads"][0]["skip_trigrams"]) == 3
    assert main(["analyze", str(tmp_path / "nope"), "--out", str(tmp_path / "o2")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()
