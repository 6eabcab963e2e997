"""`qkov demo` end to end on the shipped models: the README's main job."""

import json

import pytest

from qkov.cli import main
from qkov.cli.demo import SHIPPED, shipped_dirs


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--out", str(out), "--eval-seqs", "4"]) == 0
    return out


def test_shipped_models_have_their_training_record():
    for d in shipped_dirs():
        for f in (
            "config.json",
            "train_config.json",
            "metrics.jsonl",
            "shipped.json",
            "tokenizer.json",
            "versions.json",
        ):
            assert (d / f).is_file(), d / f
    assert (SHIPPED / "TRAINING.md").is_file()


def test_demo_writes_report_and_losses_order_by_depth(demo_out):
    analysis = json.loads((demo_out / "analysis.json").read_text())
    losses = {m["name"]: m["loss"]["value"] for m in analysis["models"]}
    assert losses["attn0"] > losses["attn1"] > losses["attn2"]
    html = (demo_out / "report.html").read_text()
    assert "attn2" in html and "<svg" in html
    main_model = analysis["models"][0]
    assert main_model["name"] == "attn2" and len(main_model["heads"]) == 8
    assert "held-out" in main_model["loss"]["source"]
