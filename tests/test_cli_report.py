"""`qkov report ANALYSIS_JSON --out DIR`: re-render report.html from analysis.json alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from qkov.cli import main
from qkov.report import dumps, render_report
from report_fixture import v2_analysis


def _write(path: Path, analysis: dict) -> Path:
    path.write_text(dumps(analysis, indent=1), encoding="utf-8")
    return path


def test_report_rerenders_the_same_html(tmp_path, capsys):
    src = _write(tmp_path / "analysis.json", v2_analysis())
    assert main(["report", str(src), "--out", str(tmp_path / "out")]) == 0
    html = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert html == render_report(v2_analysis())
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'out' / 'report.html'}"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.html"]  # atomic


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "does not exist"),
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"models": []}', "has no schema_version"),
        ("v1", "has schema_version 1 but this qkov reads version 2: rerun `qkov analyze`"),
    ],
)
def test_report_refuses_bad_json_in_one_line(tmp_path, capsys, content, message):
    src = tmp_path / "analysis.json"
    if content == "v1":
        old = v2_analysis()
        old["schema_version"] = 1
        _write(src, old)
    elif content is not None:
        src.write_text(content, encoding="utf-8")
    assert main(["report", str(src), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("qkov report: error: ") and message in err
    assert not (tmp_path / "out").exists()


def test_report_checks_the_output_first(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    # the output is refused before the (missing) input is even read
    assert main(["report", str(tmp_path / "missing.json"), "--out", str(tmp_path / "file")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_report_module_does_not_import_torch(tmp_path):
    src = _write(tmp_path / "analysis.json", v2_analysis())
    code = (
        "import sys, argparse\n"
        "from qkov.cli import report\n"
        f"report.run(argparse.Namespace(analysis={str(src)!r}, out={str(tmp_path / 'o')!r}))\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert (tmp_path / "o" / "report.html").is_file()


def test_qkov_report_command_does_not_import_torch(tmp_path):
    src = _write(tmp_path / "analysis.json", v2_analysis())
    code = (
        "import sys\nfrom qkov.cli import main\n"
        f"assert main(['report', {str(src)!r}, '--out', {str(tmp_path / 'o')!r}]) == 0\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_report_of_analyze_output_matches_its_report(tmp_path):
    """`qkov analyze` writes analysis.json and report.html; `qkov report` of that JSON gives
    the same page byte for byte."""
    from test_report import SAMPLE, make_model

    make_model(1, tmp_path / "m1")
    (tmp_path / "sample.txt").write_text(SAMPLE, encoding="utf-8")
    out = tmp_path / "analyzed"
    args = ["analyze", str(tmp_path / "m1"), "--out", str(out)]
    assert main([*args, "--text-file", str(tmp_path / "sample.txt")]) == 0
    assert main(["report", str(out / "analysis.json"), "--out", str(tmp_path / "again")]) == 0
    again = (tmp_path / "again" / "report.html").read_text(encoding="utf-8")
    assert again == (out / "report.html").read_text(encoding="utf-8")
    assert json.loads((out / "analysis.json").read_text())["schema_version"] == 2


def test_analyze_and_report_of_a_trained_mlp_layernorm_bias_run(tiny_corpus, tmp_path):
    """End to end on a model with MLPs, biases and layernorm (standard positions): a few
    training steps, `qkov analyze` writes analysis.json with the MLP knock-outs and a report
    that charts them and shows the architecture, and `qkov report` re-renders it exactly."""
    from report_html import tree
    from tiny import tiny_train

    run = tmp_path / "run"
    arch = {"n_layers": 2, "d_mlp": 32, "act_fn": "gelu_new", "normalization": "layernorm"}
    argv = tiny_train(tiny_corpus, run, steps=4, positional="standard", **arch)
    assert main([*argv, "--bias"]) == 0
    out = tmp_path / "analyzed"
    assert main(["analyze", str(run), "--out", str(out)]) == 0
    analysis = json.loads((out / "analysis.json").read_text(encoding="utf-8"))
    m = analysis["models"][0]
    assert {k: m["config"][k] for k in arch} == arch and m["config"]["bias"] is True
    assert m["evaluation"]["kind"] == "text" and m["training"]["series"]
    mlp = [t for t in m["term_importance"]["terms"] if t["kind"] == "mlp"]
    assert [t["term"] for t in mlp] == ["MLP0 knocked out", "MLP1 knocked out"]
    html = (out / "report.html").read_text(encoding="utf-8")
    ticks = [t.text for t in tree(html).by_id("m0-terms").all("text", "tick")]
    assert "MLP0 knocked out" in ticks and "MLP1 knocked out" in ticks
    card = tree(html).by_id("models").all("div", "model-card")[0]
    rows = {tr.all("th")[0].text: tr.all("td")[0].text for tr in card.all("tr")}
    assert (rows["d_mlp"], rows["normalization"], rows["bias"]) == ("32", "layernorm", "True")
    assert main(["report", str(out / "analysis.json"), "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "report.html").read_text(encoding="utf-8") == html
