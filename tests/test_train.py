import dataclasses
import json
import os
import random
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from qkov import ModelConfig, QkovError, kernels, load
from qkov.attention import implementation, kernel_available
from qkov.cli import main
from qkov.data import prepare
from qkov.loss import implementation as loss_implementation
from qkov.metrics import read_records
from qkov.train import TrainConfig, resume_config, train
from tiny import tiny_train

CFG = ModelConfig(n_layers=2, n_heads=2, d_model=16, n_ctx=16, d_vocab=300)


def small_tc(**kw) -> TrainConfig:
    base = dict(
        steps=20, batch_size=4, lr=1e-2, warmup=5, eval_interval=5, eval_batches=2, ckpt_interval=5
    )
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def data(tiny_corpus, tmp_path_factory):
    return prepare(str(tiny_corpus), vocab_size=300, cache_dir=tmp_path_factory.mktemp("c"))


def test_resume_equals_straight_run(data, tmp_path):
    straight = train(CFG, small_tc(), tmp_path / "a", progress=False, data=data)
    train(CFG, small_tc(), tmp_path / "b", stop_after=10, progress=False, data=data)
    assert json.loads((tmp_path / "b/metrics.jsonl").read_text().splitlines()[-1])["step"] == 10
    resumed = train(None, small_tc(), tmp_path / "b", resume=True, progress=False, data=data)
    for name, w in straight.weights().items():
        assert (w - resumed.weights()[name]).abs().max() <= 1e-6, name
    steps = [json.loads(x)["step"] for x in (tmp_path / "b/metrics.jsonl").read_text().splitlines()]
    assert steps == [5, 10, 15, 20]


def test_a_run_records_its_held_out_documents_and_a_resume_keeps_them(data, tiny_corpus, tmp_path):
    """heldout.json: the corpus split's held-out documents by name and text hash, what
    evaluation reads them by (`qkov.data.evaluation.heldout_documents`); a resume does not
    rewrite it (the first record is the split the run began on)."""
    from qkov.data.corpus import heldout_record, load_corpus, text_sha256

    train(CFG, small_tc(steps=10), tmp_path / "r", stop_after=5, progress=False, data=data)
    record = json.loads((tmp_path / "r" / "heldout.json").read_text())
    _, val = load_corpus(str(tiny_corpus)).split()
    assert [r["sha256"] for r in record["documents"]] == [text_sha256(d.text) for d in val]
    assert record == heldout_record(load_corpus(str(tiny_corpus)))
    (tmp_path / "r" / "heldout.json").write_text(json.dumps({"documents": []}))
    train(None, small_tc(steps=10), tmp_path / "r", resume=True, progress=False, data=data)
    assert json.loads((tmp_path / "r" / "heldout.json").read_text()) == {"documents": []}


MLP_CFG = dataclasses.replace(
    CFG, d_mlp=32, normalization="layernorm", bias=True, positional="standard"
)


def test_mlp_layernorm_bias_model_resumes_bit_exactly(data, tmp_path):
    """A 3-step run of the general model stopped after step 1 and resumed ends on the
    straight run's weights exactly; biases and norm weights train but do not decay."""
    tc = small_tc(steps=3, ckpt_interval=1, eval_interval=1, probe_interval=1, weight_decay=0.5)
    straight = train(MLP_CFG, tc, tmp_path / "a", progress=False, data=data)
    train(MLP_CFG, tc, tmp_path / "b", stop_after=1, progress=False, data=data)
    resumed = train(None, tc, tmp_path / "b", resume=True, progress=False, data=data)
    assert set(straight.weights()) >= {"W_in", "W_out", "b_in", "b_U", "ln1_w", "ln_final_b"}
    for name, w in straight.weights().items():
        assert torch.equal(w, resumed.weights()[name]), name
    assert not torch.equal(straight.b_U, torch.zeros_like(straight.b_U))  # it trained
    assert load(tmp_path / "b").cfg == MLP_CFG
    rec = read_records(tmp_path / "b/metrics.jsonl")[-1]
    assert rec["step"] == 3 and "probe_induction_score" in rec


def test_biases_and_norm_weights_are_not_decayed(data):
    from qkov.model import Transformer
    from qkov.train import _make_optimizer

    model = Transformer(MLP_CFG)
    opt = _make_optimizer(model, small_tc(weight_decay=0.5))
    decays = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        assert decays[id(p)] == (0.5 if name.startswith("W_") else 0.0), name


def test_same_seed_same_weights_and_loss_falls(data, tmp_path):
    """The same seed trains the same weights, written as the same bytes (safetensors wrote
    the metadata keys in a random order), and the loss falls."""
    a = train(CFG, small_tc(keep_checkpoints=4), tmp_path / "a", progress=False, data=data)
    b = train(CFG, small_tc(keep_checkpoints=4), tmp_path / "b", progress=False, data=data)
    for name, w in a.weights().items():
        assert torch.equal(w, b.weights()[name]), name
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.safetensors"))
    assert len(files) == 2 + 4  # model, train_state and the snapshots
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    recs = [json.loads(x) for x in (tmp_path / "a/metrics.jsonl").read_text().splitlines()]
    assert recs[-1]["val_loss"] < recs[0]["val_loss"]
    assert {"step", "tokens", "train_loss", "val_loss", "lr", "tokens_per_s"} <= set(recs[0])


def test_run_directory_is_loadable(data, tmp_path):
    trained = train(CFG, small_tc(steps=5), tmp_path / "run", progress=False, data=data)
    for f in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "metrics.jsonl",
        "train_state.safetensors",
        "train_config.json",
        "versions.json",
    ):
        assert (tmp_path / "run" / f).is_file(), f
    loaded = load(tmp_path / "run")
    assert loaded.tokenizer.get_vocab_size() == 300
    tokens = torch.randint(0, 300, (1, 16))
    torch.testing.assert_close(loaded(tokens), trained(tokens))
    record = json.loads((tmp_path / "run/versions.json").read_text())
    assert record["torch"] == torch.__version__
    # which attention the steps ran: qkov's kernel wherever it builds, else SDPA and why
    assert record["attention"] == implementation(CFG.d_head, "cpu")
    kernel = CFG.d_head % 16 == 0 and kernel_available(CFG.d_head)
    assert record["attention"].startswith("qkov CPU kernel" if kernel else "PyTorch SDPA (")
    # and how the loss ran: the whole of it in qkov's kernel where torch has MKL
    assert record["loss"] == loss_implementation(CFG.d_model, CFG.d_vocab, CFG.bias, "cpu")
    whole = kernels.compiler() is not None and torch.backends.mkl.is_available()
    assert record["loss"].startswith("qkov C kernel, the whole loss" if whole else "PyTorch")


def test_refuses_to_overwrite_and_resume_without_run(data, tmp_path):
    train(CFG, small_tc(steps=5), tmp_path / "run", progress=False, data=data)
    with pytest.raises(QkovError, match="already holds a training run"):
        train(CFG, small_tc(steps=5), tmp_path / "run", progress=False, data=data)
    with pytest.raises(QkovError, match="cannot resume"):
        train(None, small_tc(), tmp_path / "none", resume=True, progress=False, data=data)


def test_nan_loss_stops_and_keeps_last_checkpoint(data, tmp_path):
    train(CFG, small_tc(steps=20), tmp_path / "run", stop_after=5, progress=False, data=data)
    before = (tmp_path / "run/model.safetensors").read_bytes()
    with pytest.raises(QkovError, match=r"loss became (nan|inf) at step 5"):
        _train_diverging(tmp_path / "run", data)
    assert (tmp_path / "run/model.safetensors").read_bytes() == before


def _train_diverging(out, data):
    """Resume a run after poisoning W_U with inf, so the first loss is not finite."""

    from qkov import train as train_mod

    orig = train_mod.restore_state

    def restore_then_poison(model, opt, path):
        step = orig(model, opt, path)
        with torch.no_grad():
            model.W_U.fill_(float("inf"))
        return step

    train_mod.restore_state = restore_then_poison
    try:
        train(None, small_tc(), out, resume=True, progress=False, data=data)
    finally:
        train_mod.restore_state = orig


def test_lr_schedule():
    tc = TrainConfig(steps=100, warmup=10, lr=1.0, min_lr_ratio=0.1)
    assert tc.lr_at(0) == pytest.approx(0.1)
    assert tc.lr_at(9) == pytest.approx(1.0)
    assert tc.lr_at(100) == pytest.approx(0.1)
    assert tc.lr_at(55) == pytest.approx(0.55)


def test_train_config_validation():
    with pytest.raises(QkovError, match="--steps must be a positive integer"):
        TrainConfig(steps=0)
    with pytest.raises(QkovError, match="--lr must be a positive"):
        TrainConfig(lr=-1.0)


def test_init_from_starts_at_the_given_weights(data, tmp_path):
    """--init-from: step 0 of the new run holds the source's weights; then it trains on."""
    src = train(CFG, small_tc(steps=10), tmp_path / "base", progress=False, data=data)
    tc = small_tc(steps=5, lr=1e-2, init_from=str(tmp_path / "base"), seed=1)
    zero = train(
        None, dataclasses.replace(tc, lr=1e-12), tmp_path / "same", progress=False, data=data
    )
    for name, w in src.weights().items():
        torch.testing.assert_close(zero.weights()[name], w, atol=1e-8, rtol=0)
    tuned = train(None, tc, tmp_path / "tuned", progress=False, data=data)
    assert not torch.equal(tuned.W_Q, src.W_Q)
    saved = json.loads((tmp_path / "tuned/train_config.json").read_text())
    assert saved["init_from"] == str(tmp_path / "base")
    assert load(tmp_path / "tuned").cfg == src.cfg
    # Its resume: test_resumed_fine_tune_continues_its_own_state.


def test_init_from_refuses_other_shapes_and_tokenizers(data, tmp_path, tiny_corpus):
    train(CFG, small_tc(steps=5), tmp_path / "base", progress=False, data=data)
    tc = small_tc(steps=5, init_from=str(tmp_path / "base"))
    other = dataclasses.replace(CFG, d_model=32)
    with pytest.raises(QkovError, match="drop the model flags"):
        train(other, tc, tmp_path / "x", progress=False, data=data)
    data2 = prepare(str(tiny_corpus), vocab_size=280, cache_dir=tmp_path / "c2")
    with pytest.raises(QkovError, match="d_vocab=300 but the corpus tokenizer has 280"):
        train(None, tc, tmp_path / "y", progress=False, data=data2)
    other_corpus = tmp_path / "other"
    other_corpus.mkdir()
    rng = random.Random(1)
    for i in range(20):
        words = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=5)) for _ in range(300)]
        (other_corpus / f"t{i}.txt").write_text(" ".join(words))
    data3 = prepare(str(other_corpus), vocab_size=300, cache_dir=tmp_path / "c3")
    assert data3.d_vocab == 300
    with pytest.raises(QkovError, match="trained with another tokenizer"):
        train(None, tc, tmp_path / "w", progress=False, data=data3)
    assert not any((tmp_path / d).exists() for d in ("x", "y", "w"))
    with pytest.raises(QkovError, match="does not exist"):
        train(None, small_tc(init_from=str(tmp_path / "nope")), tmp_path / "z", data=data)
    with pytest.raises(QkovError, match="--min-lr-ratio must be in"):
        TrainConfig(min_lr_ratio=1.5)


def test_resumed_fine_tune_continues_its_own_state(data, tmp_path):
    """The resume of a run started --init-from: its own weights and schedule, its metrics."""
    train(CFG, small_tc(steps=10), tmp_path / "base", progress=False, data=data)
    # warmup=1: the 5-step schedule differs from the 10-step one from step 1 on.
    tc = small_tc(steps=5, warmup=1, init_from=str(tmp_path / "base"), seed=1)
    at5 = train(None, tc, tmp_path / "tuned", progress=False, data=data).weights()
    resumed = train(
        None, dataclasses.replace(tc, steps=10), tmp_path / "tuned", resume=True, data=data
    )
    steps = [r["step"] for r in read_records(tmp_path / "tuned/metrics.jsonl")]
    assert steps == [5, 10]
    assert json.loads((tmp_path / "tuned/train_config.json").read_text())["steps"] == 10
    on_disk = load(tmp_path / "tuned").weights()
    for name, w in resumed.weights().items():
        assert torch.equal(w, on_disk[name]), name
    assert not torch.equal(resumed.W_Q, at5["W_Q"])  # it trained on
    # Restarting from the base (not from its own state) would give this run exactly.
    fresh = train(None, dataclasses.replace(tc, steps=10), tmp_path / "fresh", data=data)
    assert not torch.equal(resumed.W_Q, fresh.W_Q)


def test_resume_config_keeps_the_run_schedule_unless_more_steps(data, tmp_path):
    train(CFG, small_tc(steps=5), tmp_path / "run", progress=False, data=data)
    assert resume_config(tmp_path / "run") == small_tc(steps=5)
    assert resume_config(tmp_path / "run", steps=3).steps == 5
    assert resume_config(tmp_path / "run", steps=9, device="cpu").steps == 9


def test_token_counts_of_the_train_split_are_stored_and_loaded(data, tmp_path):
    trained = train(CFG, small_tc(steps=5), tmp_path / "run", progress=False, data=data)
    rec = json.loads((tmp_path / "run/token_counts.json").read_text())
    want = np.bincount(np.asarray(data.train), minlength=300)
    assert rec["counts"] == want.tolist() and len(rec["counts"]) == 300
    assert rec["n_tokens"] == len(data.train) and rec["split"] == "train"
    assert rec["corpus"] == small_tc().corpus
    loaded = load(tmp_path / "run")
    assert loaded.token_counts.dtype == torch.long
    assert torch.equal(loaded.token_counts, torch.from_numpy(want))
    assert torch.equal(trained.token_counts, loaded.token_counts)
    (tmp_path / "run/token_counts.json").write_text('{"counts": [1, 2]}')
    with pytest.raises(QkovError, match="300 non-negative integers"):
        load(tmp_path / "run")
    (tmp_path / "run/token_counts.json").unlink()
    assert load(tmp_path / "run").token_counts is None


def test_synthetic_task_writes_no_token_counts(tmp_path):
    tc = small_tc(steps=2, corpus="repeated-random")
    train(dataclasses.replace(CFG, d_vocab=24), tc, tmp_path / "run", progress=False)
    assert not (tmp_path / "run/token_counts.json").exists()
    assert load(tmp_path / "run").token_counts is None


@pytest.mark.parametrize("where", ["proc", "under a file", "a file"])
def test_unwritable_out_is_refused_before_any_work(tiny_corpus, tmp_path, capsys, where):
    blocker = tmp_path / "file"
    blocker.write_text("keep")
    out = {"proc": "/proc/x", "under a file": blocker / "run", "a file": blocker}[where]
    assert main(tiny_train(tiny_corpus, out, steps=2)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"qkov train: error: --out {out}"), err
    assert "choose another --out" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
    assert blocker.read_text() == "keep"


def test_redirected_run_prints_plain_progress_lines(tiny_corpus, tmp_path):
    """stderr is a pipe, not a terminal: a line where the run starts (or resumes), then one
    per eval interval instead of a tqdm bar."""
    prepare(str(tiny_corpus), 300)  # the token cache the child reads
    argv = tiny_train(tiny_corpus, tmp_path / "run", progress=True, steps=6, eval_interval=2)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(
        [sys.executable, "-m", "qkov", *argv, "--steps", "4"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    start = "tokens a step; a line every 2 steps"
    first, *lines = res.stderr.strip().splitlines()
    assert first == f"train run: from step 0 to 4, 32 {start}"
    res = subprocess.run(
        [sys.executable, "-m", "qkov", *argv, "--resume", "--steps", "6"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    first, *more = res.stderr.strip().splitlines()
    assert first == f"train run: resumed at step 4 to 6, 32 {start}"
    lines += more
    pattern = (
        r"train run: step (\d+/\d+), ([\d,]+) tokens, train loss \d+\.\d{4}, "
        r"val loss \d+\.\d{4}, [\d,]+ tokens/s, MFU \d+%"
    )
    found = [re.fullmatch(pattern, line) for line in lines]
    assert all(found), lines
    assert [m.group(1) for m in found] == ["2/4", "4/4", "6/6"]
    assert [m.group(2) for m in found] == ["64", "128", "192"]  # batch 2 x n_ctx 16 per step
    assert "\r" not in res.stderr
    records = read_records(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in records] == [2, 4, 6] and all(r["mfu"] > 0 for r in records)


def test_a_matmul_peak_measured_by_a_launcher_is_what_mfu_divides_by(
    tiny_corpus, tmp_path, monkeypatch, capsys
):
    """$QKOV_MATMUL_PEAK (runs sharing one GPU: scripts/gpu_train.py measures once, alone):
    MFU is the step's FLOPs per second over that rate; a bad value is one error line before
    anything is written."""
    from qkov.flops import train_step_flops

    monkeypatch.setenv("QKOV_MATMUL_PEAK", "1e9")
    argv = tiny_train(tiny_corpus, tmp_path / "run", steps=4, eval_interval=2)
    assert main(argv) == 0
    cfg = load(tmp_path / "run").cfg
    tc = json.loads((tmp_path / "run" / "train_config.json").read_text())
    per_token = train_step_flops(cfg, tc["batch_size"]) / (tc["batch_size"] * cfg.n_ctx)
    for r in read_records(tmp_path / "run" / "metrics.jsonl"):
        assert r["mfu"] == pytest.approx(r["tokens_per_s"] * per_token / 1e9, rel=1e-3, abs=1e-4)
    capsys.readouterr()
    for bad in ("fast", "-5", "nan"):
        monkeypatch.setenv("QKOV_MATMUL_PEAK", bad)
        assert main(tiny_train(tiny_corpus, tmp_path / f"bad{bad}", steps=2)) == 2
        assert "QKOV_MATMUL_PEAK" in _one_error_line(capsys)
        assert not (tmp_path / f"bad{bad}").exists()


def test_mfu_divides_by_the_fastest_matmul_measured_so_far(tiny_corpus, tmp_path, monkeypatch):
    """A first measurement that shared the device reads low: each record measures again and
    MFU divides by the fastest seen, never overstated by the slow one; a launcher's given
    peak is never measured over."""
    import qkov.train
    from qkov.flops import train_step_flops

    monkeypatch.delenv("QKOV_MATMUL_PEAK", raising=False)
    calls = []

    def measured(device, dtype, size, reps):
        calls.append(reps)
        return 1e6 if len(calls) == 1 else 1e9  # the first, at the start, shared the CPU

    monkeypatch.setattr(qkov.train, "matmul_peak", measured)
    argv = tiny_train(tiny_corpus, tmp_path / "run", steps=6, eval_interval=2)
    assert main(argv) == 0
    assert calls == [3, 1, 1, 1]  # three products at the start, one at each of 3 records
    cfg = load(tmp_path / "run").cfg
    tc = json.loads((tmp_path / "run" / "train_config.json").read_text())
    per_token = train_step_flops(cfg, tc["batch_size"]) / (tc["batch_size"] * cfg.n_ctx)
    records = read_records(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in records] == [2, 4, 6]
    for r in records:
        assert r["mfu"] == pytest.approx(r["tokens_per_s"] * per_token / 1e9, rel=1e-3, abs=1e-4)

    def refused(*args, **kwargs):
        raise AssertionError("a given peak is not measured over")

    monkeypatch.setattr(qkov.train, "matmul_peak", refused)
    monkeypatch.setenv("QKOV_MATMUL_PEAK", "1e9")
    assert main(tiny_train(tiny_corpus, tmp_path / "given", steps=4, eval_interval=2)) == 0


def test_measuring_the_matmul_peak_leaves_the_global_rng_alone():
    """matmul_peak draws its operands from a generator of its own: measuring (as training
    does at each record) changes no random number a caller draws next."""
    from qkov.flops import matmul_peak

    torch.manual_seed(0)
    state = torch.get_rng_state()
    assert matmul_peak("cpu", torch.float32, 64, reps=1) > 0
    assert torch.equal(torch.get_rng_state(), state)


def _one_step_by_hand(cfg, tc, data, smoothing):
    """The initial weights and those after one AdamW step on batch 0's loss, smoothed by
    `smoothing` (F.cross_entropy's label_smoothing, from the logits); and that loss plain
    and smoothed."""
    from qkov.model import Transformer
    from qkov.train import _make_optimizer

    torch.manual_seed(tc.seed)
    model = Transformer(cfg)
    start = {k: w.clone() for k, w in model.weights().items()}
    batch = data.train_batch(0, tc.batch_size, cfg.n_ctx, tc.seed)
    logits, targets = model(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten()
    ce = torch.nn.functional.cross_entropy
    loss = ce(logits, targets, label_smoothing=smoothing)
    plain = ce(logits, targets).item()
    opt = _make_optimizer(model, tc)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
    opt.step()
    return start, model.weights(), plain, loss.item()


@pytest.mark.parametrize("smoothing", [0.0, 0.3])
def test_training_minimises_the_smoothed_loss_with_label_smoothing(smoothing, data, tmp_path):
    """One step of `train` moves the weights as one AdamW step by hand on the smoothed loss
    does, not as one on the other loss; the train loss logged is the plain cross-entropy,
    the smoothed loss beside it. The steps are compared as directions (cosine): AdamW's
    first step is lr * g / (|g| + eps), so an element whose gradient is near eps can move
    differently on float rounding alone (each such element moves the cosine by ~2 / the
    number of weights); the wrong loss moves it by ~0.05 here."""
    cfg = dataclasses.replace(CFG, init_std=0.3)  # logits spread: the smoothing matters
    tc = small_tc(steps=1, warmup=0, label_smoothing=smoothing)
    trained = train(cfg, tc, tmp_path / "r", progress=False, data=data).weights()
    start, by_hand, plain, smoothed = _one_step_by_hand(cfg, tc, data, smoothing)
    _, other, _, _ = _one_step_by_hand(cfg, tc, data, 0.3 - smoothing)

    def step(w: dict) -> torch.Tensor:
        return torch.cat([(w[k] - start[k]).flatten() for k in start])

    cosine = torch.nn.functional.cosine_similarity
    assert cosine(step(trained), step(by_hand), 0) > 0.9999
    assert cosine(step(trained), step(other), 0) < 0.99
    rec = read_records(tmp_path / "r/metrics.jsonl")[-1]
    assert rec["train_loss"] == pytest.approx(plain, abs=2e-5)
    if smoothing:
        assert rec["train_smoothed_loss"] == pytest.approx(smoothed, abs=2e-5)
        assert abs(smoothed - plain) > 1e-4  # 5x the tolerance: the two are told apart
    else:
        assert "train_smoothed_loss" not in rec
    saved = json.loads((tmp_path / "r/train_config.json").read_text())
    assert saved["label_smoothing"] == smoothing


@pytest.mark.parametrize("bad", ["1", "-0.1", "nan"])
def test_label_smoothing_outside_zero_to_one_is_refused_before_any_work(
    bad, tiny_corpus, tmp_path, capsys
):
    assert main([*tiny_train(tiny_corpus, tmp_path / "r"), "--label-smoothing", bad]) == 2
    assert "--label-smoothing must be in [0, 1)" in _one_error_line(capsys)
    assert not (tmp_path / "r").exists()


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("qkov train: error: "), err
    return err[0]


def test_model_flags_that_contradict_init_from_or_resume_are_refused(tiny_corpus, tmp_path, capsys):
    """--init-from DIR and --resume take the model (and, resuming, the training) from the
    run: a flag saying otherwise was silently ignored (a 32-wide model trained when
    --d-model 64 was asked for). It is refused, nothing written; the same values pass."""
    base = tmp_path / "base"
    assert main(tiny_train(tiny_corpus, base, steps=2)) == 0
    before = {p.name: p.read_bytes() for p in base.iterdir() if p.is_file()}
    capsys.readouterr()
    init = ["train", "--init-from", str(base), "--corpus", str(tiny_corpus), "--steps", "2"]
    init += ["--batch-size", "2", "--no-progress", "--out", str(tmp_path / "ft")]
    assert main([*init, "--d-model", "32", "--n-ctx", "8"]) == 2
    line = _one_error_line(capsys)
    assert "--d-model 32 (it has 16), --n-ctx 8 (it has 16) would be ignored" in line
    assert not (tmp_path / "ft").exists()
    assert main([*init, "--d-mlp", "8"]) == 2 and "--d-mlp 8 (it has 0)" in _one_error_line(capsys)
    # Given with the values the run has (its own command line), they are accepted.
    assert main([*init, "--d-model", "16", "--n-heads", "2", "--seed", "5"]) == 0
    assert json.loads((tmp_path / "ft/config.json").read_text())["d_model"] == 16
    capsys.readouterr()
    resume = ["train", "--resume", "--steps", "3", "--no-progress", "--out", str(base)]
    for flags, words in [
        (["--d-model", "32"], "--d-model 32 (it has 16)"),
        (["--lr", "1e-4"], "--lr 0.0001 (it has 0.003)"),
        (["--bias"], "--bias on (it has off)"),
        (["--init-from", str(tmp_path / "ft")], "drop --init-from"),
    ]:
        assert main([*resume, *flags]) == 2, flags
        assert words in _one_error_line(capsys)
    assert {p.name: p.read_bytes() for p in base.iterdir() if p.is_file()} == before
    # The original command line plus --resume still continues the run.
    assert main([*tiny_train(tiny_corpus, base, steps=3), "--resume"]) == 0
    assert read_records(base / "metrics.jsonl")[-1]["step"] == 3


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--act-fn", "relu"], "--act-fn does nothing without an MLP: add --d-mlp N"),
        (["--act-fn", "gelu"], "--act-fn does nothing without an MLP"),  # even the default
        (["--norm-eps", "1e-6"], "--norm-eps does nothing without a norm"),
        (["--rotary-base", "500"], "--rotary-base does nothing without --positional rotary"),
        (["--positional", "none", "--pos-init-std", "1"], "--pos-init-std does nothing with"),
    ],
)
def test_a_model_flag_with_nothing_to_do_is_refused(tiny_corpus, tmp_path, capsys, flags, words):
    assert main([*tiny_train(tiny_corpus, tmp_path / "run", steps=2), *flags]) == 2
    assert words in _one_error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_divergence_message_says_what_works(data, tmp_path):
    """--resume takes the run's --lr, so it would diverge again: the message sends the
    user to --init-from (after a checkpoint) or a new run (before the first)."""
    poison = {"W_U": float("inf")}
    with pytest.raises(QkovError) as e:
        _train_poisoned(CFG, small_tc(steps=3), tmp_path / "early", data, poison)
    assert "before its first checkpoint; train again with a lower --lr" in str(e.value)
    train(CFG, small_tc(steps=20), tmp_path / "run", stop_after=5, progress=False, data=data)
    with pytest.raises(QkovError) as e:
        _train_diverging(tmp_path / "run", data)
    assert f"--init-from {tmp_path / 'run'} --out NEW_DIR" in str(e.value)
    assert "--resume" not in str(e.value)


def _train_poisoned(cfg, tc, out, data, poison):
    """A new run whose weights are poisoned as it starts: its first loss is not finite."""
    from qkov import train as train_mod

    orig = train_mod._make_optimizer

    def poisoned(model, tc):
        with torch.no_grad():
            for name, value in poison.items():
                getattr(model, name).fill_(value)
        return orig(model, tc)

    train_mod._make_optimizer = poisoned
    try:
        train(cfg, tc, out, progress=False, data=data)
    finally:
        train_mod._make_optimizer = orig


def test_resume_after_the_corpus_changed_is_refused_and_keeps_the_run(tmp_path, capsys):
    """An edited corpus trains a new BPE: --resume would go on with other token ids under
    the same weights and overwrite the run's tokenizer.json. Refused, the run untouched.
    (Every file is edited: editing one failed to change the BPE when the hash of its path,
    which varies with pytest's folder, put it among the held-out documents.)"""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(6):
        (corpus / f"m{i}.py").write_text(
            "".join(f"def f{i}_{j}(x):\n    return x * {j} + {i}\n" for j in range(60))
        )
    out = tmp_path / "run"
    argv = tiny_train(corpus, out, steps=4, ckpt_interval=2, eval_interval=2)
    assert main(argv) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    for i in range(6):  # every file: which ones are held out depends on their path
        (corpus / f"m{i}.py").write_text(  # a new BPE
            "".join(f"class Other{i}{j}:\n    value = '{j}' + '{i}'\n" for j in range(60))
        )
    assert main(["train", "--resume", "--steps", "6", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the corpus changed since" in err[0], err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_resume_with_fewer_steps_stops_there_and_keeps_the_schedule(tiny_corpus, tmp_path, capsys):
    """`--resume --steps N`, N below the run's total, was silently taken as the run's own
    total: the run went on to its end. It stops at step N with a checkpoint, its schedule
    kept (a later --resume ends where the straight run does); a step already reached is
    refused, nothing written."""
    straight, run = tmp_path / "straight", tmp_path / "run"
    assert main(tiny_train(tiny_corpus, straight, steps=6, ckpt_interval=1, warmup=2)) == 0
    tc = resume_config(straight)  # the same run, stopped at step 2 by the library
    train(ModelConfig.load(straight / "config.json"), tc, run, stop_after=2, progress=False)
    capsys.readouterr()
    resume = ["train", "--resume", "--no-progress", "--out", str(run)]
    assert main([*resume, "--steps", "4"]) == 0
    assert f"trained {run} to step 4 of its 6 (continue with --resume)" in capsys.readouterr().out
    assert read_records(run / "metrics.jsonl")[-1]["step"] == 4
    assert resume_config(run).steps == 6
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert main([*resume, "--steps", "3"]) == 2
    assert "is already at step 4 (of its 6)" in _one_error_line(capsys)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    assert main(resume) == 0
    assert read_records(run / "metrics.jsonl")[-1]["step"] == 6
    for name, w in load(straight).weights().items():
        assert (w - load(run).weights()[name]).abs().max() <= 1e-6, name
