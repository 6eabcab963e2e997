"""`qkov demo` end to end on the shipped models: the README's main job."""

import json

import pytest

from qkov.cli import main
from qkov.demo_models import DEMO_MODELS, NAMES, shipped


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--out", str(out), "--eval-seqs", "4"]) == 0
    return out


def test_shipped_models_have_their_training_record():
    for d in map(shipped, NAMES):
        for f in (
            "config.json",
            "train_config.json",
            "metrics.jsonl",
            "shipped.json",
            "tokenizer.json",
            "versions.json",
        ):
            assert (d / f).is_file(), d / f
    assert (DEMO_MODELS / "TRAINING.md").is_file()


def test_demo_writes_report_and_losses_order_by_depth(demo_out):
    """One evaluation set for the three models (the held-out stdlib documents), each loss
    with the tokens it rests on; deeper models predict better."""
    analysis = json.loads((demo_out / "analysis.json").read_text())
    models = {m["name"]: m for m in analysis["models"]}
    assert list(models) == ["attn2", "attn1", "attn0", "mlp2"]
    losses = {n: m["loss"]["value"] for n, m in models.items()}
    assert losses["attn0"] > losses["attn1"] > losses["attn2"]
    assert losses["mlp2"] < losses["attn1"]  # MLPs and two layers: better than one layer
    evaluations = {json.dumps(m["evaluation"], sort_keys=True) for m in models.values()}
    assert len(evaluations) == 1  # the same set for all four
    ev = models["attn2"]["evaluation"]
    assert ev["kind"] == "text" and "held-out" in ev["description"]
    n_ctx = models["attn2"]["config"]["n_ctx"]
    assert ev["n_sequences"] == 4 and models["attn2"]["loss"]["n_tokens"] == 4 * (n_ctx - 1)
    html = (demo_out / "report.html").read_text()
    assert "attn2" in html and "<svg" in html
    for name in ("attn2", "mlp2"):
        c = models[name]["config"]
        assert len(models[name]["heads"]) == c["n_layers"] * c["n_heads"]
    mlp_terms = [t for t in models["mlp2"]["term_importance"]["terms"] if t["kind"] == "mlp"]
    assert [t["term"] for t in mlp_terms] == ["MLP0 knocked out", "MLP1 knocked out"]


def test_demo_reports_what_classify_heads_finds(demo_out):
    """The report's heads and induction circuit are classify_heads' on the shipped model (no
    threshold tuned to today's weights: the shipped numbers are facts in TRAINING.md)."""
    from qkov import load
    from qkov.classification import classify_heads

    main_model = json.loads((demo_out / "analysis.json").read_text())["models"][0]
    cls = classify_heads(load(shipped("attn2")))
    assert [h["label"] for h in main_model["heads"]] == [r.label for r in cls.records]
    induction = cls.with_label("induction")
    assert len(main_model["induction_circuits"]) == len(induction)
    for c, r in zip(main_model["induction_circuits"], induction, strict=True):
        top = r.partner or r.k_composition[0]
        assert c["induction_head"] == [r.layer, r.head]
        assert c["partner_head"] == [top.layer, top.head]
        assert c["induction_score"] == r.scores["induction"]
        assert c["partner_label"] == cls.record(top.layer, top.head).label


def test_retrain_runs_a_fine_tuned_model_after_its_base(tiny_corpus, tmp_path):
    """`qkov demo --train` on a two-stage record (train_config.json with init_from, the base
    run's record in base/): the base is trained first, into run_dir/base, then the stage
    from it; the training curve runs on across both stages."""
    from qkov import load
    from qkov.config import ModelConfig
    from qkov.demo_models import _retrain
    from qkov.metrics import read_records, training_history

    cfg = ModelConfig(n_layers=1, n_heads=2, d_model=16, n_ctx=16, d_vocab=300)
    common = dict(
        corpus=str(tiny_corpus),
        batch_size=2,
        warmup=2,
        eval_interval=2,
        eval_batches=1,
        ckpt_interval=2,
    )
    record = tmp_path / "record"
    (record / "base").mkdir(parents=True)
    for folder, tc, stop in (
        (record / "base", dict(common, steps=10), 6),
        (record, dict(common, steps=4, seed=1, init_from="runs/elsewhere"), 4),
    ):
        cfg.save(folder / "config.json")
        (folder / "train_config.json").write_text(json.dumps(tc))
        (folder / "shipped.json").write_text(json.dumps({"step": stop}))
    run = tmp_path / "out" / "attn1"
    _retrain(record, run, "cpu")
    base_steps = [r["step"] for r in map(json.loads, (run / "base/metrics.jsonl").open())]
    assert base_steps == [2, 4, 6]  # stopped where the base record says
    saved = json.loads((run / "train_config.json").read_text())
    assert saved["init_from"] == str(run / "base")  # started from the run it just trained
    assert load(run).cfg == cfg
    # The curve is in tokens seen; the stage's tokens count on from the base's last record.
    history = training_history(run)
    per_step = 2 * 16  # batch_size * n_ctx
    own = [(r["tokens"], r["val_loss"]) for r in read_records(run / "metrics.jsonl")]
    assert [x for x, _ in history["series"]["val_loss"]] == [per_step * s for s in (2, 4, 6, 8, 10)]
    assert history["series"]["val_loss"][3:] == [[x + 6 * per_step, v] for x, v in own]
    assert history["last_val_loss"]["tokens"] == 10 * per_step
    # Run again (a rerun of `qkov demo --train` after it finished): nothing to do, nothing changed.
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    _retrain(record, run, "cpu")
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
