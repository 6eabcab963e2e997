"""`qkov train --corpus induction-task` grows a previous-token head and an induction head
that K-composes with it, in a phase change visible in metrics.jsonl (about 20 s on a CPU)."""

import pytest

from qkov import load
from qkov.classification import classify_heads
from qkov.cli import main
from qkov.metrics import phase_change, read_records, training_history

RECIPE = (
    "--corpus induction-task --n-layers 2 --n-heads 4 --d-model 64 --n-ctx 32 "
    "--vocab-size 256 --batch-size 32 --lr 3e-3 --warmup 100 --steps 1500 "
    "--eval-interval 250 --ckpt-interval 500 --probe-interval 250 --seed 0 --no-progress"
).split()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("induction") / "run"
    assert main(["train", *RECIPE, "--out", str(out)]) == 0
    return out


@pytest.mark.slow
def test_induction_head_forms_with_previous_token_partner(run):
    cls = classify_heads(load(run), batch=16, seed=0)
    ind = max(cls.with_label("induction"), key=lambda r: r.scores["induction"])
    assert ind.layer == 1 and ind.scores["induction"] >= 0.8
    top = ind.k_composition[0]
    assert top.z > 3 and top.above_baseline and top in ind.partners
    assert cls.record(0, int(top.name[3])).label == "previous_token"
    assert ind.qk_term_eigenvalue_score > 0.9  # the K-composition term matches tokens


@pytest.mark.slow
def test_metrics_show_the_phase_change(run):
    records = read_records(run / "metrics.jsonl")
    probes = [r for r in records if "probe_induction_score" in r]
    ind = [r["probe_induction_score"] for r in probes]
    icl = [r["probe_icl_score"] for r in probes]
    assert ind[0] < 0.2 and ind[-1] >= 0.8
    jump = max(range(1, len(ind)), key=lambda i: ind[i] - ind[i - 1])
    assert ind[jump] - ind[jump - 1] > 0.3  # one interval holds most of the rise ...
    assert icl[jump] < icl[jump - 1] - 1.0  # ... and the in-context loss drop with it
    assert icl[-1] < -2.0
    # qkov.metrics.phase_change brackets that interval (x is tokens seen)
    change = phase_change(training_history(run))
    tokens = [r["tokens"] for r in probes]
    assert change is not None
    assert tokens[0] <= change["tokens"][0] <= tokens[jump - 1] < change["tokens"][1]
    assert change["tokens"][1] <= tokens[-1]
