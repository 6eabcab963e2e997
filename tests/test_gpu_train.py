"""scripts/gpu_train.py (the shipped models' sweep on a GPU) runs end to end on the CPU
with --smoke, and brings back the runs issue 18 needs, chosen by config, not by name."""

import importlib.util
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
SCRIPT = ROOT / "scripts" / "gpu_train.py"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    return module


def _eval(n_layers: int, d_mlp: int, repeated: float | None, second: float) -> dict:
    ev = {"config": {"n_layers": n_layers, "d_mlp": d_mlp}}
    if repeated is not None:
        ev["repetition"] = {
            "repeated_half_loss": repeated,
            "uniform_loss": 10.0,
            "induction_scores_mean5": [[0.0, 0.0], [0.9, second]],
        }
    return ev


def test_choose_ranks_two_layer_runs_by_config_not_name():
    gpu_train = _script("gpu_train")
    evals = {
        "r2_a": _eval(2, 0, 6.0, 0.85),  # strongest second head
        "r2_b": _eval(2, 0, 3.0, 0.50),  # lowest repeated-half loss
        "r2_c": _eval(2, 0, 5.0, 0.60),
        "mlp": _eval(2, 2048, 4.0, 0.90),  # has MLPs: not a 2-layer attention-only candidate
        "one": _eval(1, 0, 9.0, 0.0),
        "broken": {},  # its evaluation failed: nothing to rank
    }
    assert gpu_train.choose(evals) == ["r2_b", "r2_a", "mlp", "one", "r2_c"]
    assert gpu_train.repeated_fraction(evals["r2_b"]) == 0.3


def test_round2_vocabularies_are_the_ones_prepared():
    gpu_prepare = _script("gpu_prepare")
    gpu_train = _script("gpu_train")
    assert gpu_prepare.vocab_sizes(gpu_train.ROUND2_RUNS) == [2048, 8192]
    assert gpu_prepare.vocab_sizes({"x": ("", "--vocab-size 512")}) == [512]


def test_smoke_run_trains_evaluates_and_packs(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, f in enumerate(sorted((ROOT / "src" / "qkov").glob("*.py"))[:24]):
        (corpus / f"doc{i}.py").write_text(f.read_text(encoding="utf-8"), encoding="utf-8")
    out, runs = tmp_path / "out", tmp_path / "runs"
    argv = ["--smoke", "--corpus", str(corpus), "--cache", str(tmp_path / "cache")]
    argv += ["--out", str(out), "--runs", str(runs), "--minutes", "5", "--only", "r2_h4"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(
        [sys.executable, str(SCRIPT), *argv], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stdout + res.stderr
    summary = json.loads((out / "summary.json").read_text())
    run = summary["runs"]["r2_h4"]
    assert "eval_error" not in run, run
    assert run["eval"]["config"]["n_layers"] == 2 and run["eval"]["step"] == 20  # smoke: 20
    rep = run["eval"]["repetition"]
    assert set(rep) >= {"repeated_half_loss", "uniform_loss", "rival_logit", "loss_without"}
    assert list(rep["loss_without"]) == ["embed", "attn0", "attn1"]
    # the loss by training count, over the 5 seeds' 10 x 49 predictions each
    assert sum(b["predictions"] for b in rep["by_training_count"]) == 5 * 10 * 49
    # the repetition test along training, as the probe logged it (every 5 steps in a smoke run)
    along = run["eval"]["repetition_along_training"]
    assert [r["step"] for r in along] == [5, 10, 15, 20]
    for r in along:
        assert r["repetition_repeated_fraction"] == pytest.approx(
            r["repetition_repeated_half_loss"] / rep["uniform_loss"], abs=1e-4
        )  # metrics.jsonl keeps 5 decimals
    assert "lowest repeated-half fraction along training" in res.stdout
    assert summary["packed"]["runs"] == ["r2_h4"]
    with tarfile.open(out / summary["packed"]["parts"][0]) as tar:
        names = tar.getnames()
        tar.extract("r2_h4/model.safetensors", tmp_path / "packed", filter="data")
    assert "r2_h4/model.safetensors" in names and "r2_h4/config.json" in names
    # the weights come back in float16, with their step: shipped as they are
    from safetensors import safe_open

    with safe_open(str(tmp_path / "packed" / "r2_h4" / "model.safetensors"), "pt") as f:
        meta, dtype = f.metadata(), f.get_slice("W_E").get_dtype()
    assert dtype == "F16" and meta["dtype"] == "float16" and int(meta["step"]) > 0
    # a second sweep into the same folder would evaluate and pack the first one's runs
    again = subprocess.run(
        [sys.executable, str(SCRIPT), *argv], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert again.returncode == 2 and "already holds r2_h4" in again.stderr
