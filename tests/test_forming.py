"""qkov.forming and `qkov forming`: the training probe at each checkpoint of a run."""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import pytest

from factories import probed_run
from hf_models import hf_model, save_folder
from qkov.checkpoint import load
from qkov.cli import main
from qkov.config import ModelConfig, TrainConfig
from qkov.forming import circuit_along
from qkov.snapshots import list_snapshots
from qkov.train import train
from qkov.training_probe import training_probe

KEYS = ("probe_induction_score", "probe_previous_token_score", "probe_icl_score")
REPETITION = (
    "repetition_induction_score",
    "repetition_second_score",
    "repetition_first_half_loss",
    "repetition_repeated_half_loss",
    "repetition_uniform_loss",
)
CIRCUIT = ("probe_k_composition", "probe_qk_eigenvalue", "probe_ov_eigenvalue")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 2-layer run that probes every step and keeps 3 snapshots (its last step among them)."""
    return probed_run(tmp_path_factory.mktemp("forming") / "run")


def cli(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def test_a_run_s_snapshots_give_what_training_logged(run):
    rows = circuit_along([run])
    kept = list_snapshots(run)
    assert [r["step"] for r in rows] == kept and kept[-1] == 8  # the last step is a snapshot
    assert [r["checkpoint"] for r in rows] == [f"step {s:,}" for s in kept]
    logged = {r["step"]: r for r in map(json.loads, (run / "metrics.jsonl").open())}
    for row in rows:
        want = logged[row["step"]]
        for key in KEYS + CIRCUIT + REPETITION:
            assert row[key] == pytest.approx(want[key], abs=2e-5), (row["step"], key)
        for key in ("probe_induction_head", "probe_partner_head", "repetition_induction_head"):
            assert row[key] == want[key], (row["step"], key)
        assert want["repetition_half_len"] == 8 and isinstance(want["repetition_half_len"], int)


def test_the_final_weights_follow_the_snapshots_when_they_are_not_one(run, tmp_path):
    """A run stopped between snapshots: its own weights are the last row."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "snapshots" / "step-00000008.safetensors").unlink()
    rows = circuit_along([copy])
    assert [r["step"] for r in rows] == [*list_snapshots(copy), 8]
    assert rows[-1]["checkpoint"] == "step 8"
    final = training_probe(load(copy).eval())
    assert rows[-1]["probe_k_composition"] == pytest.approx(final["probe_k_composition"])


def test_a_run_still_training_has_its_checkpoint_in_step_order(run, tmp_path):
    """A run's checkpoint is written every --ckpt-interval, its snapshots at their own
    steps: while it trains, the checkpoint can be older than its last snapshot."""
    from qkov.forming import checkpoints
    from qkov.snapshots import save_snapshot

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "snapshots" / "step-00000008.safetensors").unlink()
    save_snapshot(copy, load(copy), 12)  # a later snapshot than the checkpoint (step 8)
    steps = [c.step for c in checkpoints([copy])]
    assert steps == sorted(steps) and steps[-2:] == [8, 12]


def test_folders_in_the_order_given(tmp_path):
    """Several checkpoint folders (Hugging Face ones here): a row each, named by folder, in
    the order given, each the training probe of that model; the table and JSON agree."""
    a = save_folder(hf_model("gpt2", seed=1), tmp_path / "b-<i>first")
    b = save_folder(hf_model("gpt2", seed=2), tmp_path / "a-second")
    html = tmp_path / "forming.html"
    code, out, err = cli("forming", a, b, "--json", tmp_path / "f.json", "--html", html)
    assert code == 0, err
    rows = json.loads((tmp_path / "f.json").read_text())
    assert [r["checkpoint"] for r in rows] == ["b-<i>first", "a-second"]
    assert [r["step"] for r in rows] == [None, None]
    for row, folder in zip(rows, (a, b), strict=True):
        want = training_probe(load(folder).eval())
        assert row["probe_induction_score"] == pytest.approx(want["probe_induction_score"])
        assert row["probe_induction_head"] == want["probe_induction_head"]
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["checkpoint", "induction"]
    assert lines[1].startswith("b-<i>first") and lines[2].startswith("a-second")
    assert f"{rows[0]['probe_k_composition']:.3f}" in lines[1]
    assert "(1 of 2)" in err and "(2 of 2)" in err  # a progress line per checkpoint
    # the page: the four charts (x: the order given, no steps) and the table, the names
    # escaped, nothing that runs or fetches
    page = html.read_text()
    assert page.count("<svg") == 4 and "checkpoint, in the order given" in page
    assert "b-&lt;i&gt;first" in page and "<i>" not in page
    assert "<script" not in page and "Content-Security-Policy" in page
    assert f"<td>{rows[1]['probe_induction_score']:.3f}</td>" in page


def test_each_checkpoint_has_the_repetition_test_of_its_weights(tmp_path):
    """Two folders: the planted induction model, then the same with its induction head's
    output zeroed. The first finds the planted head and learns the repeat; the second does
    not; each record is the repetition test of that model, its best two heads and the
    losses; the table and the page show them."""
    import math

    import torch

    from factories import induction_model
    from qkov.checkpoint import save_model
    from qkov.repetition import repetition_test

    model = induction_model(noise=0.02)
    with torch.no_grad():
        model.W_U.mul_(20.0)  # sharp logits: the copied token wins by a wide margin
    save_model(model, tmp_path / "a")
    with torch.no_grad():
        model.W_O[1, 0].zero_()
    save_model(model, tmp_path / "b")
    html = tmp_path / "forming.html"
    code, out, err = cli(
        "forming", tmp_path / "a", tmp_path / "b", "--json", tmp_path / "f.json", "--html", html
    )
    assert code == 0, err
    with_head, without = json.loads((tmp_path / "f.json").read_text())
    # n_ctx 12 holds a block of 6 repeated once
    assert with_head["repetition_half_len"] == without["repetition_half_len"] == 6
    assert with_head["repetition_induction_head"] == "L1H0"
    assert with_head["repetition_induction_score"] > 0.9
    assert with_head["repetition_second_score"] < 0.5
    assert with_head["repetition_repeated_half_loss"] < with_head["repetition_first_half_loss"] / 2
    assert without["repetition_repeated_half_loss"] > 0.8 * without["repetition_first_half_loss"]
    for row, folder in ((with_head, "a"), (without, "b")):
        want = repetition_test(load(tmp_path / folder).eval(), half_len=6, split=False)
        assert row["repetition_repeated_half_loss"] == pytest.approx(want.repeated_half_loss)
        assert row["repetition_first_half_loss"] == pytest.approx(want.first_half_loss)
        best, second = want.top_heads(2)
        assert row["repetition_induction_head"] == f"L{best[0]}H{best[1]}"
        assert row["repetition_second_head"] == f"L{second[0]}H{second[1]}"
        assert row["repetition_induction_score"] == pytest.approx(best[2])
        assert row["repetition_second_score"] == pytest.approx(second[2])
        assert row["repetition_uniform_loss"] == pytest.approx(math.log(12))
        assert row["repetition_repeated_fraction"] == pytest.approx(
            want.repeated_half_loss / math.log(12)
        )
    line = out.splitlines()[1]
    assert f"{with_head['repetition_repeated_half_loss']:.2f}" in line
    assert f"{with_head['repetition_repeated_fraction']:.0%}" in line
    page = html.read_text()
    assert "loss on repeated random tokens" in page and page.count("<svg") == 4
    assert "a block of 6 repeated once" in page and "<td>L1H0</td>" in page
    assert f"<td>{with_head['repetition_repeated_fraction']:.0%}</td>" in page


def test_repetition_seeds_give_each_head_s_mean_and_each_loss_s_mean(tmp_path):
    """--repetition-seeds 3: the repetition test's keys are the means over seeds 4, 5, 6 of
    `repetition_test` run seed by seed (the heads ranked by their mean score); the probe's
    keys are seed 4's as before, and the table says what the losses are."""
    import torch

    from factories import induction_model
    from qkov.checkpoint import save_model
    from qkov.repetition import repetition_test

    model = induction_model(noise=0.3)  # noisy: the three seeds differ
    save_model(model, tmp_path / "a")
    save_model(model, tmp_path / "b")
    code, out, err = cli(
        "forming",
        tmp_path / "a",
        tmp_path / "b",
        "--seed",
        "4",
        "--repetition-seeds",
        "3",
        "--json",
        tmp_path / "f.json",
        "--html",
        tmp_path / "f.html",
    )
    assert code == 0, err
    assert out.splitlines()[0] == "repetition test: the mean of seeds 4 to 6"
    assert "each score and loss the mean of 3 seeds" in (tmp_path / "f.html").read_text()
    row = json.loads((tmp_path / "f.json").read_text())[0]
    one, _ = circuit_along([tmp_path / "a", tmp_path / "b"], seed=4)
    tests = [repetition_test(load(tmp_path / "a").eval(), half_len=6, seed=s) for s in (4, 5, 6)]
    assert len({t.repeated_half_loss for t in tests}) == 3
    scores = torch.stack([t.induction_scores for t in tests]).mean(0)
    flat = scores.flatten()
    best, second = flat.argsort(descending=True)[:2].tolist()
    n_heads = scores.shape[1]
    assert row["repetition_seeds"] == 3 and "repetition_seeds" not in one
    assert row["repetition_induction_head"] == f"L{best // n_heads}H{best % n_heads}"
    assert row["repetition_second_head"] == f"L{second // n_heads}H{second % n_heads}"
    assert row["repetition_induction_score"] == pytest.approx(float(flat[best]))
    assert row["repetition_second_score"] == pytest.approx(float(flat[second]))
    for key in ("first_half_loss", "repeated_half_loss"):
        mean = sum(getattr(t, key) for t in tests) / 3
        assert row[f"repetition_{key}"] == pytest.approx(mean)
    assert row["repetition_repeated_fraction"] == pytest.approx(
        row["repetition_repeated_half_loss"] / tests[0].uniform_loss
    )
    for key, value in one.items():  # the probe and the circuit: seed 4, as without the flag
        if not key.startswith("repetition_"):
            assert row[key] == (pytest.approx(value) if isinstance(value, float) else value), key


def test_a_context_too_short_for_the_repetition_test_leaves_it_out():
    """n_ctx 7 holds no block of 4 repeated once; n_ctx 8 does. A model without heads has
    the losses and no head."""
    from factories import random_model
    from qkov.repetition import repetition_record

    assert repetition_record(random_model(n_ctx=7)) == {}
    record = repetition_record(random_model(n_ctx=8))
    assert record["repetition_half_len"] == 4
    assert record["repetition_second_head"] is not None
    bigram = repetition_record(random_model(n_layers=0, n_ctx=8))
    assert bigram["repetition_induction_head"] is None and bigram["repetition_second_score"] is None
    assert bigram["repetition_repeated_half_loss"] > 0


def test_a_folder_s_step_is_its_record_or_its_name(run, tmp_path):
    """Pythia's revisions are named by step: folders named so are placed at their steps;
    a qkov checkpoint's own record wins over its name."""
    from qkov.forming import checkpoints

    a = save_folder(hf_model("gpt2"), tmp_path / "pythia-70m-step1000")
    b = save_folder(hf_model("gpt2", seed=1), tmp_path / "pythia-70m-Step_143000")
    c = save_folder(hf_model("gpt2", seed=2), tmp_path / "final")
    assert [x.step for x in checkpoints([a, b, c])] == [1000, 143000, None]
    named = tmp_path / "run-step5"
    shutil.copytree(run, named)
    assert [x.step for x in checkpoints([named, run])] == [8, 8]  # its weights' step


def test_bad_input_is_one_line_and_exit_2(run, tmp_path):
    plain = tmp_path / "plain"  # a run without snapshots
    train(
        ModelConfig(n_layers=1, n_heads=2, d_model=16, n_ctx=16, d_vocab=32),
        TrainConfig(corpus="induction-task", steps=2, batch_size=2, warmup=1),
        plain,
        progress=False,
    )
    hf = save_folder(hf_model("gpt2"), tmp_path / "hf")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cases = [
        ((plain,), ["has no snapshots", "--keep-checkpoints"]),
        ((run, hf), ["has n_heads=", "give checkpoints of one training run"]),
        ((run, tmp_path / "missing"), ["does not exist"]),
        ((tmp_path,), ["has no config.json"]),
        ((run, "--json", blocker / "out.json"), ["--json"]),
        ((run, "--html", blocker / "out.html"), ["--html"]),
        ((run, "--repetition-seeds", "0"), ["--repetition-seeds must be at least 1"]),
        ((run, "--head", "L0H1"), ["--head L0H1 is not a head this model can pin"]),
        ((run, "--head", "L1H1", "--partner", "L1H0"), ["is not an earlier head than --head"]),
        ((run, "--partner", "L0H0"), ["--partner needs --head"]),
        ((run, "--head", "1.1"), ["--head: '1.1' is not a head: write it as L1H5"]),
    ]
    for argv, words in cases:
        code, out, err = cli("forming", *argv)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1, (argv, err)
        for word in words:
            assert word in lines[0], (word, lines[0])
        assert out == "", argv  # refused before any work


def test_head_and_partner_follow_one_pair_through_every_checkpoint(run, tmp_path):
    """--head L1H1 --partner L0H1: every checkpoint's circuit is that pair's (its
    K-composition as `composition_score` gives it on the checkpoint's weights), with the
    head's own probe score beside the best; the table and the page say what was pinned.
    With --head alone the partner is chosen at each checkpoint for that head."""
    from qkov.circuits import W_OV, W_QK
    from qkov.composition import composition_score
    from qkov.snapshots import load_snapshot

    j, page = tmp_path / "f.json", tmp_path / "f.html"
    argv = ("forming", run, "--head", "L1H1", "--partner", "L0H1", "--json", j, "--html", page)
    code, out, err = cli(*argv)
    assert code == 0, err
    said = "the circuit of L1H1 (--head) at every checkpoint, with its partner L0H1"
    assert out.splitlines()[0] == said and said in page.read_text()
    assert "its score" in out.splitlines()[1]
    rows = json.loads(j.read_text())
    assert [r["step"] for r in rows] == list_snapshots(run)
    for row in rows:
        assert (row["probe_induction_head"], row["probe_partner_head"]) == ("L1H1", "L0H1")
        model = load_snapshot(run, row["step"]).eval()
        k = composition_score(W_OV(model)[0, 1], W_QK(model)[1, 1].T)
        assert row["probe_k_composition"] == pytest.approx(float(k), abs=1e-5)
        assert row["probe_induction_head_score"] <= row["probe_induction_score"]
    free = circuit_along([run], head=(1, 1))
    assert {r["probe_induction_head"] for r in free} == {"L1H1"}
    logged = {r["step"]: r for r in map(json.loads, (run / "metrics.jsonl").open())}
    best = [r for r in free if logged[r["step"]]["probe_induction_head"] == "L1H1"]
    assert 0 < len(best) < len(free)  # this run's best head changes: L1H0 at step 1
    for row in best:  # where training's best head was L1H1: its partner and numbers
        want = logged[row["step"]]
        assert row["probe_partner_head"] == want["probe_partner_head"]
        for key in CIRCUIT:
            assert row[key] == pytest.approx(want[key], abs=2e-5), key
    code, out, _ = cli("forming", run)
    assert "its score" not in out  # without --head, no column of dashes


@pytest.mark.parametrize(
    "steps, axis",
    [
        ([15, 108, 1500], "training step (log scale)"),  # snapshots: geometric
        ([500, 1000, 1500], "training step<"),
        ([None, 1000, 2000], "checkpoint, in the order given"),
    ],
)
def test_the_page_s_x_axis(steps, axis):
    """Over more than a decade of steps x is logarithmic (snapshots are spaced so), over
    less it is the step; without every step it is the order given."""
    from qkov.report.forming import forming_page

    rows = [
        {"checkpoint": f"c{i}", "step": s, "probe_induction_score": 0.1 * i}
        for i, s in enumerate(steps)
    ]
    page = forming_page(rows, "t")
    assert axis in page
    assert page.count("<svg") == 1  # only the chart with numbers is drawn
    assert "The repetition test (" not in page  # records without it: no empty table
