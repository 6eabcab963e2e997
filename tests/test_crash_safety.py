"""Crash safety of `qkov train`, tested on real subprocesses.

- SIGKILL at random moments (some during checkpoint writes) always leaves a directory that
  `qkov.load` reads and `--resume` continues, losing at most one checkpoint interval; the
  final weights equal those of an uninterrupted run exactly (tolerance 0 on CPU: batches
  depend only on (seed, step) and the AdamW state is saved whole).
- SIGINT / SIGTERM write a final checkpoint and exit with status 128 + signal (130 / 143)
  and one line.
- Same seed and config give identical weights; the run records its versions."""

from __future__ import annotations

import json
import os
import platform
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import qkov
from qkov import load
from qkov.cli import main
from qkov.data import prepare
from qkov.train import resume_config, train
from tiny import tiny_train

STEPS, CKPT = 48, 2
# Where each SIGKILL lands: at a random point of training (eval, log or checkpoint), at a
# random moment of start-up, or as soon as a checkpoint's temp file appears.
KILLS = ["training", "start-up", "training", "checkpoint write", "start-up"]
N_KILLS = len(KILLS)
WRITE_RETRIES = 4  # more "checkpoint write" kills while none has landed inside a write
HANG_GUARD_S = 600  # only against a hung subprocess; never a speed assertion


def train_args(corpus: Path, out: Path, steps: int = STEPS, ckpt: int = CKPT) -> list[str]:
    return tiny_train(
        corpus,
        out,
        n_layers=2,
        batch_size=4,
        steps=steps,
        warmup=4,
        lr="1e-2",
        eval_interval=1,
        ckpt_interval=ckpt,
    )


def spawn(args: list[str], **env_vars: str) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", **env_vars)  # QKOV_CACHE comes from conftest
    return subprocess.Popen(
        [sys.executable, "-m", "qkov", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def logged_steps(run: Path) -> list[int]:
    """Steps of the complete metrics lines (a line being written is skipped)."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    steps = []
    for line in path.read_text(encoding="utf-8").split("\n")[:-1]:  # only lines with "\n"
        try:
            steps.append(json.loads(line)["step"])
        except (json.JSONDecodeError, KeyError, TypeError):
            pass
    return steps


def saved_step(run: Path) -> int:
    with safe_open(str(run / "train_state.safetensors"), "pt") as f:
        return int(f.get_tensor("step").item())


def model_step(run: Path) -> int:
    with safe_open(str(run / "model.safetensors"), "pt") as f:
        return int(f.metadata()["step"])


def temp_files(run: Path) -> set[str]:
    return {p.name for p in run.iterdir() if p.name.endswith(".tmp")}


def wait_for(proc: subprocess.Popen, ready) -> None:
    """Poll (2 ms) until ready() or the process ends; the process must still be running."""
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(
                f"qkov train ended early ({proc.returncode}): {proc.stderr.read()}"
            )
        time.sleep(0.002)


def weights_of(run: Path) -> dict[str, torch.Tensor]:
    return load(run).weights()


@pytest.fixture(scope="module")
def reference(tiny_corpus, tmp_path_factory) -> Path:
    """The uninterrupted run, in-process (it also fills the token cache the children read)."""
    prepare(str(tiny_corpus), 300)
    out = tmp_path_factory.mktemp("ref") / "run"
    assert main(train_args(tiny_corpus, out)) == 0
    return out


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_is_exact(tiny_corpus, reference, tmp_path):
    rng = random.Random(7)
    run = tmp_path / "run"
    kills = resumes = mid_write = startup_kills = retries = 0
    prev, stale = 0, 0  # last saved step; highest step logged so far (maybe not saved)
    planned = list(KILLS)  # grows when a "checkpoint write" kill lands after the write
    for i, where in enumerate(planned):
        proc = spawn(
            train_args(tiny_corpus, run)
            if i == 0
            else ["train", "--resume", "--out", str(run), "--no-progress"]
        )
        resumes += i > 0
        before = temp_files(run) if run.is_dir() else set()
        if where == "start-up":
            # A random moment of the resume's start (imports, token cache, rewriting
            # config.json and metrics.jsonl).
            time.sleep(rng.uniform(0.0, 1.5))
            startup_kills += 1
        elif where == "checkpoint write":
            # A kill as soon as a checkpoint's temp file appears: inside an atomic write.
            wait_for(
                proc,
                lambda b=before, s=stale: (
                    temp_files(run) - b and max(logged_steps(run), default=0) > s
                ),
            )
        else:
            target = max(prev, stale) + rng.randint(1, 6)
            wait_for(
                proc,
                lambda t=target: (
                    (run / "train_state.safetensors").is_file()
                    and max(logged_steps(run), default=0) >= t
                ),
            )
            time.sleep(rng.uniform(0.0, 0.01))  # somewhere in the step: eval, log, checkpoint
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=HANG_GUARD_S)
        if proc.returncode != -signal.SIGKILL:
            raise AssertionError(
                f"qkov train was not killed ({proc.returncode}): {proc.stderr.read()}"
            )
        proc.stderr.close()
        kills += 1
        torn = bool(temp_files(run) - before)  # a torn temp file: killed mid-write
        mid_write += torn
        if where == "checkpoint write" and not torn and retries < WRITE_RETRIES:
            # The write ended between its temp file appearing and the kill (a loaded
            # machine): still a valid kill and resume, and another try at a mid-write one.
            retries += 1
            planned.insert(i + 1, "checkpoint write")

        # The directory loads, and at most one checkpoint interval is lost.
        load(run)
        step = saved_step(run)
        logged = max(logged_steps(run), default=0)
        assert step >= prev, "a checkpoint went backwards"
        assert step >= logged - CKPT, (step, logged)
        assert model_step(run) in (step, step + CKPT)  # model.safetensors is written first
        prev, stale = step, max(stale, logged)
        if i == 2:
            # A torn last line (as a power cut could leave): --resume must drop it.
            with open(run / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write('{"step": 9999, "train_lo')

    proc = spawn(["train", "--resume", "--out", str(run), "--no-progress"])
    resumes += 1
    assert proc.wait(timeout=HANG_GUARD_S) == 0, proc.stderr.read()
    proc.stderr.close()

    lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(x)["step"] for x in lines] == list(range(1, STEPS + 1))
    assert saved_step(run) == STEPS == model_step(run)
    assert not temp_files(run), "--resume leaves no temp file of an interrupted write behind"
    got, want = weights_of(run), weights_of(reference)
    diff = max((got[k] - want[k]).abs().max().item() for k in want)
    for k in want:
        assert torch.equal(got[k], want[k]), (k, diff)  # tolerance 0: bit-identical
    print(
        f"\nkill test: {kills} SIGKILLs ({mid_write} left a torn temp file, i.e. landed "
        f"inside a checkpoint write; {startup_kills} during start-up), {resumes} successful "
        f"resumes; final weights equal the uninterrupted run (max |diff| = {diff})"
    )
    assert kills == len(planned) == resumes and len(planned) == N_KILLS + retries
    # The "checkpoint write" kills wait for a temp file (up to 1 + WRITE_RETRIES of them):
    # at least one landed mid-write.
    assert mid_write >= 1, "no SIGKILL landed inside a checkpoint write"


def test_sigint_and_sigterm_write_final_checkpoint_and_exit_cleanly(
    tiny_corpus, reference, tmp_path
):
    """Ctrl-C (SIGINT) and SIGTERM, each to its own run (run side by side to save time)."""
    runs = {sig: tmp_path / sig.name for sig in (signal.SIGINT, signal.SIGTERM)}
    # A checkpoint interval longer than the run: the only checkpoint is the interrupt's.
    procs = {
        sig: spawn(train_args(tiny_corpus, run, steps=400, ckpt=1000)) for sig, run in runs.items()
    }
    for sig, proc in procs.items():
        wait_for(proc, lambda r=runs[sig]: max(logged_steps(r), default=0) >= 3)
        proc.send_signal(sig)
    data = prepare(str(tiny_corpus), 300)
    for sig, proc in procs.items():
        run = runs[sig]
        assert proc.wait(timeout=HANG_GUARD_S) == 128 + sig, sig.name
        err = proc.stderr.read()
        proc.stderr.close()
        assert err.strip().splitlines() == [
            f"interrupted: checkpoint saved in {run}; continue with --resume"
        ], (sig.name, err)
        step = saved_step(run)
        assert step >= 3 and step == max(logged_steps(run)) == model_step(run), sig.name
        load(run)
        # --resume continues from there (two more steps, in-process).
        model = train(
            None,
            resume_config(run),
            run,
            resume=True,
            stop_after=step + 2,
            progress=False,
            data=data,
        )
        assert saved_step(run) == step + 2
        torch.testing.assert_close(model.W_E.detach(), load(run).W_E)


def test_same_seed_same_weights_and_versions_recorded(tiny_corpus, reference, tmp_path):
    again = tmp_path / "again"
    assert main(train_args(tiny_corpus, again)) == 0
    a, b = weights_of(reference), weights_of(again)
    assert all(torch.equal(a[k], b[k]) for k in a)
    drop = lambda r: {k: v for k, v in r.items() if k not in ("tokens_per_s", "mfu")}  # noqa: E731
    ma = [drop(json.loads(x)) for x in (reference / "metrics.jsonl").read_text().splitlines()]
    mb = [drop(json.loads(x)) for x in (again / "metrics.jsonl").read_text().splitlines()]
    assert ma == mb
    other = tmp_path / "other-seed"
    assert main([*train_args(tiny_corpus, other, steps=4), "--seed", "1"]) == 0
    assert not torch.equal(weights_of(other)["W_E"], a["W_E"])

    v = json.loads((reference / "versions.json").read_text())
    assert v["python"] == platform.python_version()
    assert v["torch"] == torch.__version__
    assert v["qkov"] == qkov.__version__
    assert v["platform"]


# One step of this configuration takes about 10 s on one CPU thread (the unembedding of a
# 30000-token vocabulary), twice the watchdog's least grace period.
SLOW = dict(
    n_layers=1, n_heads=2, d_model=256, n_ctx=512, vocab_size=30000, batch_size=24, warmup=1,
    eval_interval=1, eval_batches=1, ckpt_interval=1,
)  # fmt: skip
LIVENESS_S = 120  # generous: a stop that waited for the step would still pass it only by luck


@pytest.mark.slow
def test_sigterm_stops_a_slow_step_promptly_and_the_run_resumes(tmp_path):
    """A step blocked in long torch ops ignores Python signal handlers; the watchdog exits
    the process (143) the grace period after SIGTERM instead of waiting for the step to end
    (the least grace period set to 0.5 s by $QKOV_STOP_GRACE_S, so any machine's step
    outlasts it)."""
    run = tmp_path / "slow"
    first = ["train", "--corpus", "repeated-random", "--steps", "1", "--out", str(run)]
    first += [f"--{k.replace('_', '-')}={v}" for k, v in SLOW.items()] + ["--no-progress"]
    proc = spawn(first)
    assert proc.wait(timeout=HANG_GUARD_S) == 0, proc.stderr.read()
    proc.stderr.close()
    step_s = 4096 * 3 / json.loads((run / "metrics.jsonl").read_text())["tokens_per_s"]
    # A grace period well below one step on any machine this suite runs on (a skip here
    # would leave the watchdog untested exactly where steps are fast).
    grace = 0.5
    assert step_s > 2 * grace, f"a step takes {step_s:.1f}s: enlarge SLOW"

    # A fresh process (no step timed yet: the grace period is the least) continues to step 3.
    proc = spawn(
        ["train", "--resume", "--steps", "3", "--out", str(run), "--no-progress"],
        QKOV_STOP_GRACE_S=str(grace),
    )
    wait_for(proc, lambda: json.loads((run / "train_config.json").read_text())["steps"] == 3)
    t0 = time.monotonic()  # the run's files are written: step 2 is starting
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=LIVENESS_S)
    elapsed = time.monotonic() - t0
    err = proc.stderr.read()
    proc.stderr.close()
    assert rc == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM (the step in progress did not end within" in err, err
    assert elapsed < grace + step_s / 2, (elapsed, step_s)  # it did not wait for the step
    # The last checkpoint (step 1) is intact, and --resume continues from it.
    assert saved_step(run) == 1 == model_step(run)
    model = train(None, resume_config(run), run, resume=True, stop_after=2, progress=False)
    assert saved_step(run) == 2
    torch.testing.assert_close(model.W_E.detach(), load(run).W_E)
