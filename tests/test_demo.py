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


def test_shipped_two_layer_model_has_induction_circuit(demo_out):
    """The shipped 2-layer model: a layer-1 induction head (score >= 0.5 on the standard
    probe) whose key reads (K-composition far above the random baseline) a layer-0
    previous-token head, through a token-matching QK term."""
    main_model = json.loads((demo_out / "analysis.json").read_text())["models"][0]
    circuits = main_model["induction_circuits"]
    assert circuits, [h["role"] for h in main_model["heads"]]
    best = max(circuits, key=lambda c: c["induction_score"])
    assert best["induction_head"][0] == 1 and best["induction_score"] >= 0.5
    assert best["partner_role"] == "previous_token" and best["previous_token_head"][0] == 0
    assert best["k_composition_z"] > 3 and best["qk_term_eigenvalue_score"] > 0.9


def test_retrain_runs_a_fine_tuned_model_after_its_base(tiny_corpus, tmp_path):
    """`qkov demo --train` on a two-stage record (train_config.json with init_from, the base
    run's record in base/): the base is trained first, into run_dir/base, then the stage
    from it; the training curve runs on across both stages."""
    from qkov import load
    from qkov.analyze import read_metrics, training_history
    from qkov.cli.demo import _retrain
    from qkov.config import ModelConfig

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
    history, last_val = training_history(run)
    own, _ = read_metrics(run / "metrics.jsonl")
    assert [s for s, _ in history["series"]["val_loss"]] == [2, 4, 6, 8, 10]
    assert history["series"]["val_loss"][3:] == [[s + 6, v] for s, v in own["series"]["val_loss"]]
    assert last_val["step"] == 10
