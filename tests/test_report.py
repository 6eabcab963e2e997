"""report/: escaping, self-containment, schema, and what the rendered page shows.

Rendering is checked on a hand-written schema-v2 analysis (tests/report_fixture.py) whose
numbers are known, by parsing the HTML and reading the cells, captions and titles a reader
sees. The tests at the end build the analysis through `qkov.analyze` from small random
models whose tokenizer holds hostile token strings, so the real pipeline meets the report."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers

import qkov
from qkov.errors import QkovError
from qkov.names import SCORE_NAMES
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
from report_fixture import HOSTILE, LONG_TOKEN, v2_analysis
from report_html import parse, table_rows, tree


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
                    "tokens": s * 4096,
                    "train_loss": 4 - s / 300,
                    "val_loss": 4.2 - s / 320,
                    "lr": 1e-3,
                    "probe_induction_score": min(1.0, s / 400),
                    "probe_previous_token_score": 0.6,
                    "probe_icl_score": -s / 300,
                }
            )
            for s in range(0, 600, 100)
        ]
        (out / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 6', encoding="utf-8")
    return model


SAMPLE = " ".join(HOSTILE + ["w1", "w2", "w3"]) + " " + " ".join(HOSTILE + ["w1", "w2", "w3"])


def build_analysis(root: Path) -> dict:
    """Analysis of saved 2-, 0- and 1-layer random models (the demo's shape)."""
    from qkov.analyze import analyze

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
def page() -> str:
    """The report of the hand-written v2 analysis."""
    return render_report(v2_analysis())


@pytest.fixture(params=["fixture", "analyze"])
def html(request) -> str:
    """Both reports: of the hand-written analysis and of `qkov.analyze`'s."""
    if request.param == "fixture":
        return render_report(v2_analysis())
    return render_report(request.getfixturevalue("analysis"))


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
    # whitespace only, newline included: a code indent's spaces are shown, not left blank
    assert visible_token("\n    ") == "\u21b5" + "\u2423" * 4
    assert visible_token("\t ") == "\u21e5\u2423"
    assert visible_token(" a b") == " a b"  # spaces beside text stay spaces


def test_hostile_tokens_are_text_not_markup(html):
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
    # ...and a reader sees them as they are, in the token tables and the attention strip
    assert HOSTILE[0] in tree(html).by_id("m0-attention").text


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


def test_csp_hashes_admit_exactly_the_page_assets(page):
    import base64
    import hashlib

    p = parse(page)
    csp = next(
        a["content"]
        for t, a in p.tags
        if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"
    )
    script = next(t for a, t in p.scripts if a.get("type") != "application/json")
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in csp
    assert "default-src 'none'" in csp and "unsafe-inline" not in csp


# ---------------------------------------------------------------------------- what is drawn
def test_head_table_shows_each_label_and_score(page):
    heads = tree(page).by_id("m0-heads").all("table", "heads")[0]
    rows = table_rows(heads)
    assert [r[:2] for r in rows] == [
        ["L0H0", "previous_token"],
        ["L0H1", "other"],
        ["L1H0", "induction"],
        ["L1H1", "copying"],
    ]
    groups = [th.text for th in heads.all("th", "group")]
    assert groups == ["on the random-token probe", "on the evaluation text"]
    probe_cols = int(heads.all("th", "group")[0].attrs["colspan"])
    columns = [th.text for th in heads.all("thead")[0].all("tr")[1].all("th")]
    probe, text = columns[:probe_cols], columns[probe_cols:]
    # on the probe prefix matching is the induction score: shown once, as induction
    assert probe == ["previous_token", "induction", "duplicate_token", "copying", "positional"]
    assert text == ["previous_token", "prefix_matching", "duplicate_token", "copying", "positional"]
    l1h0 = dict(
        zip(["head", "label", *probe, *[f"text {c}" for c in text], "ov"], rows[2], strict=True)
    )
    assert l1h0["induction"] == "0.620" and l1h0["text prefix_matching"] == "0.432"
    assert l1h0["ov"] == "+0.981"  # HEAD.ov_eigenvalue_score, signed
    assert rows[1][2 + len(probe) :] == ["\u2013"] * len(text) + ["-0.500"]  # no text scores


def test_one_number_format(page):
    doc = tree(page)
    cells = [td.text for td in doc.all("td", "n")]
    assert cells and all(re.fullmatch(r"[+-]?\d+\.\d{3,4}|\u2013", c) for c in cells), cells
    bigram = table_rows(doc.by_id("m0-bigrams").all("table")[0])
    assert [r[-1] for r in bigram] == ["2.000", "0.001"]  # 0.000685: not 6.85e-04
    assert not re.search(r"\de[+-]\d", doc.text)  # no scientific notation anywhere


def test_composition_heatmaps_have_titles(page):
    titles = [t.text for t in tree(page).by_id("m0-composition").all("text", "title")]
    assert titles == [f"{k}-composition into layer 1" for k in "QKV"]
    captions = [c.text for c in tree(page).by_id("m0-composition").all("figcaption")]
    assert captions == ["baseline (random heads) 0.050 \u00b1 0.010"] * 3


def test_a_small_baseline_spread_keeps_two_significant_digits():
    """A spread of 0.0004 read '\u00b1 0.000', as if the baseline had none."""
    a = v2_analysis()
    a["models"][0]["composition"]["baseline_std"] = {"q": 0.0004, "k": 0.0004, "v": 0.0004}
    captions = [c.text for c in tree(render_report(a)).by_id("m0-composition").all("figcaption")]
    assert captions == ["baseline (random heads) 0.05000 \u00b1 0.00040"] * 3


def test_phase_change_only_where_recorded(page):
    doc = tree(page)
    texts = {i: doc.by_id(f"m{i}-training").text for i in range(3)}
    assert "Phase change between 12M and 16M tokens" in texts[0]
    for i in (1, 2):  # the 0- and 1-layer models have training curves but no phase change
        assert "phase change" not in texts[i].lower(), texts[i]
        assert not doc.by_id(f"m{i}-training").all("rect", "band")
    assert len(doc.by_id("m0-training").all("rect", "band")) == 4  # shaded on each chart
    assert "induction bump" not in page


def test_training_curves_are_in_tokens(page):
    train = tree(page).by_id("m0-training")
    ticks = [t.text for t in train.all("text", "tick")]
    assert "tokens seen" in ticks and "step" not in ticks
    assert {"0", "10M", "20M", "30M"} <= set(ticks)
    legend = [t.text for t in train.all("text", "legend")]
    assert "val_loss" in legend and "probe_icl_score" in legend
    assert "val_loss is training's own held-out estimate" in train.text


def test_the_repetition_test_over_training_has_a_chart_of_its_own(page):
    """Its losses (5 to 13 nats on a real model) would flatten the training loss's chart;
    its induction score joins the head scores."""
    figures = tree(page).by_id("m0-training").all("figure")
    legends = {
        f.all("figcaption")[0].text: [t.text for t in f.all("text", "legend")] for f in figures
    }
    assert legends["loss on repeated random tokens (repetition test)"] == [
        "repetition_first_half_loss",
        "repetition_repeated_half_loss",
        "repetition_uniform_loss",
    ]
    assert legends["training loss"] == ["train_loss", "val_loss"]
    assert "repetition_induction_score" in legends["head scores over training (random-token probe)"]


def test_model_card_shows_one_loss_with_what_it_rests_on(page):
    card = tree(page).by_id("models").all("div", "model-card")[0]
    rows = {tr.all("th")[0].text: tr.all("td")[0].text for tr in card.all("tr")}
    assert rows["loss"] == "2.500 nats/token on 512 predicted tokens"
    # one parenthesis, whatever the description's own (the probe's: "(..., seed 0)")
    assert (
        rows["evaluation set"] == "held-out documents of --corpus stdlib (8 sequences of 65 tokens)"
    )
    assert rows["ICL score (evaluation set)"] == (
        "-0.512 \u00b1 0.041 nats (mean loss on tokens 55\u201363 minus on tokens 40\u201349; "
        "8 sequences)"
    )
    assert rows["probe ICL score"] == "-1.234 nats (random-token training probe)"
    assert "val_loss" not in card.text and "val loss" not in card.text  # no competing loss


def test_skip_trigram_tables_name_the_token_filter_and_keep_tokens_whole(page):
    card = tree(page).by_id("m0-L1H0")
    assert card.all("h5")[0].text == (
        "top skip-trigrams (tokens seen \u2265 5 times in training; 3,012 of 4,096 tokens)"
    )
    cells = card.all("td", "tc")
    assert LONG_TOKEN in [c.text for c in cells]
    css = re.search(r"\n\.t \{[^}]*\}", page).group(0)  # the token chip's own rule
    assert "white-space: pre;" in css and "break" not in css
    assert re.search(r"td\.tc \{ white-space: nowrap; \}", page)


def test_induction_circuit_names_its_partner(page):
    section = tree(page).by_id("m0-induction")
    note = section.all("p", "circuit")[0].text
    assert "\u03a3\u03bb/\u03a3|\u03bb| of the QK term through L0H0: +0.980" in note
    assert "label: previous_token" in section.text
    assert "partner 1" not in page and "previous-token" not in page


def test_an_analysis_from_before_partner_head_draws_the_same_partner():
    """Files written before 2026-12-07 name the partner "previous_token_head"; the report
    reads it there, so an old analysis.json draws the same induction section."""
    new = v2_analysis()
    circuit = new["models"][0]["induction_circuits"][0]
    circuit["partner_head"] = [0, 1]  # not the fixture's default: the key must be read
    old = v2_analysis()
    old_circuit = old["models"][0]["induction_circuits"][0]
    del old_circuit["partner_head"]
    old_circuit["previous_token_head"] = [0, 1]

    def section(a: dict) -> str:
        return tree(render_report(a)).by_id("m0-induction").text

    assert "QK term through L0H1" in section(new)
    assert section(old) == section(new)


def test_repetition_section_shows_both_halves_and_the_split(page):
    section = tree(page).by_id("m0-repetition")
    text = section.text
    assert "on the repeated half 5.560 (73% of the uniform 7.625)" in text
    assert "Highest induction scores on it" in text and "L1H0 0.870, L1H1 0.120" in text
    assert "5.560 nats = the log-sum-exp of the logits 12.79" in text
    bars = [t.text for t in section.all("title")]  # the loss's parts, then each writer
    assert bars[:4] == [
        "log-sum-exp of the logits: 12.7900 nats",
        "that of a uniform guess: 7.6250 nats",
        "the repeated token's logit: 7.2300 nats",
        "the loss: their difference: 5.5600 nats",
    ]
    assert bars[4].startswith("L1H0: 7.1") and len(bars) == 4 + 5 + 5 + 5 + 3 + 2
    assert [b.split(":")[0] for b in bars[9:14]] == ["L0H0", "L0H1", "embed", "L1H0", "L1H1"]
    assert bars[14:19] == [  # the loss as it is, without each layer's direct write, uniform
        "as it is: 5.5600 nats",
        "without embed: 5.5000 nats",
        "without attn0: 2.7000 nats",
        "without attn1: 10.9000 nats",
        "a uniform guess: 7.6250 nats",
    ]
    assert "its strongest rival's logit by writer" in text
    assert "highest logit at each prediction: 11.040 on average" in text
    assert bars[19:] == [  # then the loss by training count, the uniform guess's, the lifts
        "never (40): 19.0600 nats",
        "1,000-9,999 (450): 4.3600 nats",
        "a uniform guess: 7.6250 nats",
        "never (40): 0.5000",
        "1,000-9,999 (450): 7.4000",
    ]
    assert "the repeated half's loss by how often the token occurred in training" in text


def test_mlp_model_card_shows_its_architecture_and_how_to_read_it(page):
    """d_mlp, act_fn, normalization and bias are config keys: the card shows them, with
    notes on what folding and MLPs mean for the circuits; the attention-only card has none."""
    cards = tree(page).by_id("models").all("div", "model-card")
    assert len(cards) == 4
    mlp, attn = cards[3], cards[0]
    rows = {tr.all("th")[0].text: tr.all("td")[0].text for tr in mlp.all("tr")}
    assert (rows["d_mlp"], rows["act_fn"], rows["bias"]) == ("128", "gelu_new", "True")
    assert (rows["normalization"], rows["positional"]) == ("layernorm", "standard")
    assert "LayerNorm: the circuits read the folded model" in mlp.all("p", "folded")[0].text
    assert "each MLP's output starts paths of its own (order 0)" in mlp.all("p", "mlp")[0].text
    assert "RMS-normalised" not in mlp.text
    assert not attn.all("p", "folded") and not attn.all("p", "mlp")
    assert "RMS-normalised" in attn.text


def test_term_importance_charts_mlp_knockouts_beside_heads(page):
    """The MLP model's knock-outs share one chart with its heads, in layer order, each bar
    titled with its number; the order chart says what an order means with MLPs."""
    terms = tree(page).by_id("m3-terms")
    assert [h.text for h in terms.all("h5")] == [
        "all terms of one order ablated (patterns frozen)",
        "one head or MLP knocked out",
    ]
    order_chart, knock_chart = terms.all("svg")
    labels = [t.text for t in knock_chart.all("text", "tick")][::2]  # name, value, name, ...
    assert labels == [f"{n} knocked out" for n in ("L0H0", "L0H1", "MLP0", "L1H0", "L1H1", "MLP1")]
    titles = [t.text for t in knock_chart.all("title")]
    assert "MLP0 knocked out: 1.8750 nats" in titles and "MLP1 knocked out: 0.6250 nats" in titles
    assert [t.text for t in order_chart.all("text", "tick")][0] == (
        "order 0: direct path, biases, MLPs"
    )
    note = terms.all("p", "order-meaning")[0].text
    assert note.startswith("An order counts the heads on a path.") and "MLP" in note
    plain = tree(page).by_id("m0-terms")  # attention-only: as before
    assert [h.text for h in plain.all("h5")][1] == "one head knocked out"
    assert not plain.all("p", "order-meaning")


def test_only_mlp_knockouts_are_titled_so():
    """At scale the per-head knock-outs are left out and the MLPs' stay: the chart's title
    says MLP, not "head or MLP"."""
    a = v2_analysis()
    m = a["models"][3]
    m["term_importance"]["terms"] = [
        t for t in m["term_importance"]["terms"] if t.get("kind") != "head"
    ]
    m.setdefault("not_computed", {})["head_knockouts"] = "over the budget at this size"
    terms = tree(render_report(a)).by_id("m3-terms")
    assert [h.text for h in terms.all("h5")][1] == "one MLP knocked out"


def test_mlp_model_heads_and_induction_circuit_draw_as_attention_only(page):
    doc = tree(page)
    for section in ("heads", "induction", "composition"):
        a, b = doc.by_id(f"m0-{section}"), doc.by_id(f"m3-{section}")
        assert a.text.replace("m0-", "") == b.text.replace("m3-", ""), section
    rows = table_rows(doc.by_id("m3-heads").all("table", "heads")[0])
    assert [r[:2] for r in rows][2] == ["L1H0", "induction"]


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
    doc = tree(render_report(a))
    assert "Not computed: qkov.composition failed" in doc.by_id("m0-composition").text
    for section in (
        "bigrams",
        "heads",
        "attention",
        "induction",
        "repetition",
        "terms",
        "training",
    ):
        assert "Not computed" in doc.by_id(f"m0-{section}").text, section


def test_schema_errors_are_qkov_errors():
    with pytest.raises(QkovError, match="schema_version"):
        render_report({"models": []})
    old = v2_analysis()
    old["schema_version"] = 1
    with pytest.raises(QkovError, match=r"schema_version 1 but this qkov reads version 2") as e:
        render_report(old)
    assert "\n" not in str(e.value)
    with pytest.raises(QkovError, match="no models"):
        render_report({"schema_version": SCHEMA_VERSION, "models": []})


# ---------------------------------------------------------------------------- notebook views
def test_notebook_views_escape_tokens():
    pattern = torch.softmax(torch.randn(2, len(HOSTILE), len(HOSTILE)), -1).tril()
    views = [
        attention_html(HOSTILE, pattern),
        head_table_html([{"layer": 0, "head": 1, "label": HOSTILE[1], "scores": {"x": 0.5}}]),
        eigenvalues_html(torch.tensor([1 + 1j, -0.5 + 0j]), label=HOSTILE[0]),
    ]
    for v in views:
        for bad in HOSTILE[:3]:
            assert bad not in v
        assert "http://" not in v.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_notebook_views_read_records_and_compute_nothing():
    from qkov.classification import HeadRecord
    from qkov.report import widgets

    assert not hasattr(widgets, "DISPLAY")
    rec = HeadRecord(
        layer=1,
        head=0,
        label="induction",
        decided_by="induction",
        threshold=0.4,
        scores={"previous_token": 0.1, "induction": 0.7, "prefix_matching": 0.7},
        ov_eigenvalue_score=0.25,
    )
    for records in ([rec], SimpleNamespace(records=(rec,))):  # records or a classification
        rows = table_rows(tree(head_table_html(records)).all("table")[0])
        assert rows == [["L1H0", "induction", "0.100", "0.700", "+0.250"]]
    # The score shown is the one given (here deliberately not the eigenvalues' own).
    eig = torch.tensor([1 + 1j, -0.5 + 0j])
    assert "= -0.125</figcaption>" in eigenvalues_html(eig, score=-0.125)
    record = SimpleNamespace(eigenvalues=eig, eigenvalue_score=0.5)  # an OVStatistics
    assert "= +0.500</figcaption>" in eigenvalues_html(record, label="OV")
    assert "\u03a3\u03bb" not in eigenvalues_html(eig)  # nothing given, nothing computed


# ---------------------------------------------------------------------------- with qkov.analyze
def test_analysis_covers_every_section(analysis):
    assert analysis["schema_version"] == SCHEMA_VERSION
    m2, m0, m1 = analysis["models"]
    assert [m["config"]["n_layers"] for m in (m2, m0, m1)] == [2, 0, 1]
    assert len(m2["heads"]) == 4 and len(m1["heads"]) == 2 and not m0.get("heads")
    h = m2["heads"][0]
    assert len(h["ov_eigenvalues"]) == 16 and len(h["qk_eigenvalues"]) == 16
    assert -1 <= h["ov_eigenvalue_score"] <= 1 and h["skip_trigrams"]
    assert tuple(h["scores"]) == SCORE_NAMES
    comp = m2["composition"]
    k = torch.tensor(
        [[[[math.nan if v is None else v for v in c] for c in b] for b in a] for a in comp["k"]]
    )
    assert k.shape == (2, 2, 2, 2)  # [l_earlier, h_earlier, l_later, h_later]
    assert k[0, :, 1].isfinite().all() and k[1].isnan().all() and k[:, :, 0].isnan().all()
    assert set(comp["baseline"]) == {"q", "k", "v"}
    orders = [t for t in m2["term_importance"]["terms"] if t["kind"] == "order"]
    assert [t["order"] for t in orders] == [0, 1, 2]
    series = m2["training"]["series"]
    assert {"val_loss", "probe_induction_score", "probe_icl_score"} <= set(series)
    assert "lr" not in series
    assert series["val_loss"][-1] == [500 * 4096, 4.2 - 500 / 320]  # x: tokens seen
    assert m2["training"]["last_val_loss"]["value"] == 4.2 - 500 / 320
    att = m2["attention"]
    n = len(att["tokens"])
    rows = torch.tensor(att["patterns"])  # [layer, head, dest, src]
    assert rows.shape == (2, 2, n, n)
    assert torch.allclose(rows.sum(-1), torch.ones(2, 2, n), atol=1e-3)
    for m in analysis["models"]:
        assert math.isfinite(m["loss"]["value"]) and m["loss"]["n_tokens"] > 0
        assert m["evaluation"]["n_tokens"] == m["loss"]["n_tokens"]
    for m in (m2, m1):  # the repeated half's loss = log_sum_exp - logit; writers sum to it
        r = m["repetition"]
        x = r["repeated_token_logit"]
        assert len(r["induction_scores"]) == m["config"]["n_layers"]
        assert x["log_sum_exp"] - x["logit"] == pytest.approx(r["repeated_half_loss"], rel=1e-4)
        assert sum(x["writers"].values()) == pytest.approx(x["logit"], rel=1e-3, abs=1e-4)
    assert "repetition" not in m0


def test_analyze_report_draws_each_section(analysis):
    doc = tree(render_report(analysis))
    assert len(doc.all("div", "head-card")) == 4 + 2
    labels = [r[1] for r in table_rows(doc.by_id("m0-heads").all("table", "heads")[0])]
    assert labels == [h["label"] for h in analysis["models"][0]["heads"]]
    assert doc.by_id("m0-composition").all("text", "title")
    assert doc.by_id("m0-training").all("polyline")
    phase = analysis["models"][0].get("phase_change")
    assert ("Phase change between" in doc.by_id("m0-training").text) == bool(phase)


def test_write_analysis_round_trips(analysis, tmp_path):
    from qkov.analyze import write_analysis

    json_path, html_path = write_analysis(tmp_path / "out", analysis)
    text = json_path.read_text(encoding="utf-8")

    def no_nan(x):
        raise AssertionError(f"analysis.json holds {x}")

    back = json.loads(text, parse_constant=no_nan)
    assert render_report(back) == html_path.read_text(encoding="utf-8")
    (tmp_path / "file").write_text("x")
    with pytest.raises(QkovError, match="not a (directory|folder)"):
        write_analysis(tmp_path / "file", analysis)


def test_analyze_in_memory_model_without_tokenizer():
    from qkov.analyze import analyze

    model = qkov.AttnOnlyTransformer(
        qkov.ModelConfig(n_layers=1, n_heads=2, d_model=16, n_ctx=16, d_vocab=40)
    )
    a = analyze(model, log=None)
    m = a["models"][0]
    assert m["name"] and m["attention"]["text"]  # name: analyze's choice ("1L" before v2)
    assert m["not_computed"]["training"]
    doc = tree(render_report(a))
    assert "Not computed" in doc.by_id("m0-training").text


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


def test_final_scale_is_noted_where_circuits_are_written_before_the_norm():
    """A model with a final norm (final_scale recorded) gets the note on its skip-trigram
    tables (OV circuits: written before the norm), with the measured scale, and none on its
    bigrams (the direct path reads each token over its own RMS: logits for a 0-layer
    model); one without a final norm gets none: its circuits are logits."""
    plain = tree(render_report(v2_analysis()))
    assert not plain.all("p", "units")
    analysis = v2_analysis()
    analysis["models"][0]["final_scale"] = {"median": 10.61, "p10": 8.6, "p90": 13.0,
                                            "n_positions": 4096}  # fmt: skip
    doc = tree(render_report(analysis))
    notes = [p.text for p in doc.all("p", "units")]
    assert len(notes) == 1  # above the heads' cards and their skip-trigrams
    assert (
        "median 10.610" in notes[0] and "8.600-13.000" in notes[0] and "\u00f7 10.610" in notes[0]
    )
    assert not doc.by_id("m0-bigrams").all("p", "units")
    # with layers analyze also records W_E's RMS: the bigram table, read over each token's
    # own RMS, is then not the logits, and its note says by how much
    analysis["models"][0]["embedding_rms"] = {"median": 2.5, "p10": 2.0, "p90": 3.25,
                                              "n_tokens": 64}  # fmt: skip
    bigrams = tree(render_report(analysis)).by_id("m0-bigrams")
    (note,) = [p.text for p in bigrams.all("p", "units")]
    assert "median 2.500" in note and "2.000-3.250" in note and "median 10.610" in note
    assert "value \u00d7 2.500 \u00f7 10.610" in note


def test_wide_head_table_scrolls_in_its_box_and_names_may_wrap(page):
    """Ten score columns are wider than a laptop page: the table sits in its own scrolling
    box (the page never scrolls sideways) and a score's name may wrap after "_"."""
    section = tree(page).by_id("m0-heads")
    box = section.all("div", "wide")[0]
    assert box.all("table", "heads")
    assert re.search(r"\n\.wide \{ overflow-x: auto;", page)
    assert "previous_<wbr>token" in page


def test_token_strips_may_wrap_between_tokens_only(page):
    """The example text is one line of unbreakable token spans unless the line may break
    between two of them (at 800 px it ran off the page)."""
    strip = page[page.index('<div class="qkov-strip"') :]
    strip = strip[: strip.index("</div></div>")]
    assert strip.count('<span class="tok"') > 3
    assert "</span><span" not in strip and strip.count("</span><wbr><span") > 3


def test_circuit_note_says_when_the_knocked_out_head_is_not_the_partner():
    """`knockout_head` is the earlier head whose zeroing lowers the induction score most;
    where that is not the partner, the note says so instead of calling it the partner's
    causal test."""
    a = v2_analysis()
    circuit = a["models"][0]["induction_circuits"][0]
    circuit.update(knockout_head=[0, 0], knockout_drop=0.5)
    note = tree(render_report(a)).by_id("m0-induction").all("p", "circuit")[0].text
    assert "zeroing L0H0's output lowers the induction score by 0.500 (the causal test of" in note
    circuit.update(knockout_head=[0, 1])
    note = tree(render_report(a)).by_id("m0-induction").all("p", "circuit")[0].text
    assert "zeroing L0H1's output lowers the induction score by 0.500" in note
    assert "causal test of the partner" not in note and "not the partner L0H0" in note
    assert "knocked out, over the budget" not in note
    n_heads = a["models"][0]["config"]["n_heads"]
    circuit.update(knockouts=1)  # a budget cut the knock-outs to one earlier head
    note = tree(render_report(a)).by_id("m0-induction").all("p", "circuit")[0].text
    assert f"of the 1 of {n_heads} earlier heads knocked out, over the budget" in note


def test_bar_labels_keep_small_values_apart_and_long_names_inside():
    """A chart of knock-outs of 0.0013 and -0.0004 nats is not labelled 0.001 and 0.000 (a
    red bar beside "0.000"); a long bar name starts inside the chart, not left of it."""
    from qkov.report.svg import hbar_chart

    svg = hbar_chart([("L0H0", 0.0013), ("L0H1", -0.0004)], "knock-outs", " nats")
    labels = re.findall(r'class="tick">([^<]*nats)</text>', svg)
    assert labels == ["0.0013 nats", "-0.0004 nats"]
    assert "2.500" in hbar_chart([("a", 2.5), ("b", 0.0004)], "x")  # the usual 3 decimals
    name = "order 0: direct path, biases, MLPs and more"
    svg = hbar_chart([(name, 1.0)], "orders")
    x = float(re.search(r'<text x="([\d.]+)"[^>]*text-anchor="end">' + name, svg).group(1))
    assert x >= 5.6 * len(name)  # its estimated width fits left of its end


# ---------------------------------------------------------------- a GPT-2-small-sized report
@pytest.fixture(scope="module")
def gpt2_analysis():
    from report_fixture import gpt2_shaped

    return gpt2_shaped()


@pytest.fixture(scope="module")
def gpt2_page(gpt2_analysis):
    return render_report(gpt2_analysis)


def test_gpt2_sized_report_stays_small(gpt2_page):
    """144 heads: 14.8 MB and 363k elements when every composition cell, attention cell and
    eigenvalue was an SVG element with a tooltip; now a few MB and a few tens of thousands."""
    assert len(gpt2_page.encode()) < 4_000_000
    assert gpt2_page.count("<") < 40_000
    assert gpt2_page.count("<rect") < 3_000 and gpt2_page.count("<title>") < 3_000
    assert gpt2_page.count("<circle") < 1_000
    doc = tree(gpt2_page)
    comp = doc.by_id("m0-composition")
    assert len(comp.all("image")) == 3 and not comp.all("rect", "cell")
    assert len(doc.by_id("m0-heads").all("image")) == 144  # an attention map a card


def test_gpt2_sized_composition_keeps_every_score(gpt2_analysis, gpt2_page):
    """The dense maps' hover data holds every (later, earlier) score of analysis.json, and
    each pixel's colour is its score's."""
    from qkov.report.raster import level
    from test_heatmaps import png_of, read_png

    comp = gpt2_analysis["models"][0]["composition"]
    blocks = {a.get("id"): text for a, text in parse(gpt2_page).scripts}
    data = json.loads(blocks["comp-m0"])
    assert len(data["rows"]) == len(data["cols"]) == 132
    assert data["rows"][0] == "L1H0" and data["cols"][-1] == "L10H11"
    doc = tree(gpt2_page)
    images = doc.by_id("m0-composition").all("image")
    vmax = max(v for k in "qkv" for v in _flat_values(comp[k]))
    for kind, img in zip("qkv", images, strict=True):
        pixels, _, _ = read_png(png_of(img.attrs["href"]))
        n = 0
        for i, row in enumerate(data["rows"]):
            l1, h1 = (int(x) for x in row[1:].split("H"))
            for j, col in enumerate(data["cols"]):
                l0, h0 = (int(x) for x in col[1:].split("H"))
                v = comp[kind][l0][h0][l1][h1]
                if l0 >= l1:
                    assert data[kind][i][j] is None and pixels[i][j] == 0
                    continue
                n += 1
                assert data[kind][i][j] == round(v, 3)
                base = comp["baseline"][kind]
                assert pixels[i][j] == level((v - base) / (vmax - base))
        assert n == 144 * 132 // 2  # 9,504 pairs, each present once
    # the strongest pairs are listed, highest first, with the report's number format
    top = table_rows(doc.by_id("m0-composition").all("table", "top-pairs")[0])
    scores = [float(r[1]) for r in top]
    assert len(top) == 8 and scores == sorted(scores, reverse=True)


def _flat_values(x):
    if isinstance(x, list):
        return [v for item in x for v in _flat_values(item)]
    return [x] if isinstance(x, (int, float)) else []


def test_gpt2_sized_heads_keep_every_head_and_the_attention_data(gpt2_analysis, gpt2_page):
    """Every head has its row and card; attention maps are images whose hover reads the
    causal rows of every head's pattern; eigenvalues are dots, each one drawn."""
    m = gpt2_analysis["models"][0]
    doc = tree(gpt2_page)
    heads = doc.by_id("m0-heads")
    assert len(heads.all("div", "head-card")) == 144
    assert len(table_rows(heads.all("table", "heads")[0])) == 144
    assert heads.all("div", "tall")  # the 144-row table scrolls in its own box
    assert "every eigenvalue is in analysis.json" in heads.text
    dots = [p.attrs["d"].count("h0") for p in heads.all("path") if p.has_class("dots")]
    assert sum(dots) == 144 * 2 * 64
    blocks = {a.get("id"): text for a, text in parse(gpt2_page).scripts}
    att = json.loads(blocks["attn-m0"])
    for key, pat in att["patterns"].items():
        layer, head = (int(x) for x in key.split("."))
        full = m["attention"]["patterns"][layer][head]
        assert [len(r) for r in pat] == list(range(1, 49))  # causal part only
        assert pat == [[round(v, 3) for v in row[: i + 1]] for i, row in enumerate(full)]


def test_small_models_keep_their_svg_heatmaps(page):
    """Up to 16 heads nothing changes: annotated composition cells with tooltips, one rect a
    shown attention cell, one circle with its value a eigenvalue; no raster image."""
    doc = tree(page)
    assert not doc.all("image")
    assert doc.by_id("m0-composition").all("rect", "cell")
    assert any(c.has_class("eig") for c in doc.by_id("m0-heads").all("circle"))
    assert not doc.by_id("m0-heads").all("div", "tall")


def test_evaluation_text_keeps_one_parenthesis():
    """The probe's description ends in its own parenthesis: the size joins it (it read
    "(..., seed 0) (random tokens; 16 sequences ...)")."""
    from qkov.report.cards import evaluation_text

    probe = {
        "description": "random tokens ending in a repeated block (the induction probe, seed 0)",
        "kind": "random_tokens",
        "n_sequences": 16,
        "seq_len": 128,
    }
    assert evaluation_text({"evaluation": probe}) == (
        "random tokens ending in a repeated block (the induction probe, seed 0; 16 sequences "
        "of 128 tokens)"
    )
    text = {"description": "notes.txt", "kind": "text", "n_sequences": 3, "seq_len": 64}
    assert evaluation_text({"evaluation": text}) == "notes.txt (3 sequences of 64 tokens)"
    odd = dict(text, description="my probe", kind="random_tokens")
    assert (
        evaluation_text({"evaluation": odd}) == "my probe (random tokens; 3 sequences of 64 tokens)"
    )


def test_the_fold_note_says_what_each_norm_folds():
    """LayerNorm folds a weight and a bias and centres the writes; RMSNorm folds its weight
    alone (it has no bias and does not centre); the weightless rms and no norm fold nothing."""
    from qkov.report.cards import config_notes

    layernorm, rmsnorm = (
        config_notes({"normalization": "layernorm"}),
        config_notes({"normalization": "rmsnorm"}),
    )
    assert "LayerNorm" in layernorm and "weight and bias" in layernorm and "centred" in layernorm
    assert "RMSNorm" in rmsnorm and "learned weight is folded" in rmsnorm
    assert "bias" not in rmsnorm and "centred" not in rmsnorm
    assert "qkov.fold" not in config_notes({"normalization": "none"})


def test_one_sequence_has_no_standard_error_rather_than_one_of_zero():
    """An ICL score over one sequence has no standard error (NaN in IclResult, null in
    analysis.json): the card, and `qkov analyze`'s summary line, say so instead of the
    "± 0.000" or "± -" they showed."""
    from qkov.cli.analyze import summary
    from qkov.report.cards import icl_text

    one = {"score": -0.257, "stderr": None, "early": [2, 4], "late": [30, 32], "n_sequences": 1}
    text = icl_text(one)
    assert "(one sequence: no standard error)" in text and "\u00b1" not in text
    assert text.endswith("; 1 sequence)")
    many = icl_text(one | {"stderr": 0.145, "n_sequences": 63})
    assert "-0.257 \u00b1 0.145 nats" in many and many.endswith("; 63 sequences)")
    rec = {
        "name": "m",
        "evaluation": {"description": "a text"},
        "loss": {"value": 5.6, "n_tokens": 31},
        "icl": one,
    }
    (line,) = summary({"models": [rec]})
    assert line.endswith("ICL score -0.257 (one sequence: no standard error)")


def test_the_card_shows_the_rotary_options_only_where_positions_rotate():
    """rotary_dim, rotary_base and rotary_scaling say nothing about a model without rotary
    positions (the shipped ones): left out of its card; a rotary model's card shows them,
    its rescaling as analysis.json spells it."""
    from qkov.report.cards import model_cards

    base = {"n_layers": 2, "positional": "shortformer", "rotary_dim": None}
    base |= {"rotary_base": 10000.0, "rotary_scaling": None}
    plain = model_cards([{"name": "m", "config": base}])
    assert "rotary" not in plain and "shortformer" in plain
    scaling = {"rope_type": "linear", "factor": 2.0}
    rotary = base | {"positional": "rotary", "rotary_dim": 64, "rotary_scaling": scaling}
    card = model_cards([{"name": "m", "config": rotary}])
    assert ">rotary_dim<" in card and ">rotary_base<" in card
    assert "{&quot;rope_type&quot;: &quot;linear&quot;, &quot;factor&quot;: 2.0}" in card
