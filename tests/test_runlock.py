"""One writer per run directory (qkov.runlock): a second `qkov train` on a directory another
process is writing is refused with one line naming it and the writer's pid, having written
nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from qkov.cli import main
from qkov.data import prepare
from qkov.runlock import RunLock
from tiny import tiny_train


def snapshot(folder):
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}


def test_a_locked_directory_is_refused_and_left_untouched(tiny_corpus, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    before = snapshot(run)
    with RunLock(run) as lock:
        lock.acquire()
        assert main(tiny_train(tiny_corpus, run, steps=2)) == 2
        assert main(["train", "--resume", "--out", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2
    assert err[0] == (
        f"qkov train: error: {run} is being written by process {os.getpid()} (another qkov "
        "train): wait for it to finish or stop it, or choose another --out"
    )
    assert snapshot(run) == before
    # Released: the same directory trains.
    assert main(tiny_train(tiny_corpus, run, steps=2)) == 0


@pytest.mark.slow
def test_second_process_on_a_running_directory_is_refused(tiny_corpus, tmp_path):
    prepare(str(tiny_corpus), 300)  # fill the token cache the children read
    run = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "qkov"]
    first = subprocess.Popen(
        [*cmd, *tiny_train(tiny_corpus, run, steps=100000, ckpt_interval=5, eval_interval=50)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not (run / "train_state.safetensors").is_file():
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()
            time.sleep(0.05)
        for argv in (
            tiny_train(tiny_corpus, run, steps=2),  # a new run into the same --out
            ["train", "--resume", "--out", str(run), "--no-progress"],
        ):
            second = subprocess.run([*cmd, *argv], env=env, capture_output=True, text=True)
            assert second.returncode == 2, second.stderr
            assert second.stderr.strip().splitlines() == [
                f"qkov train: error: {run} is being written by process {first.pid} (another "
                "qkov train): wait for it to finish or stop it, or choose another --out"
            ]
        assert first.poll() is None, "the first run was disturbed"
    finally:
        first.send_signal(signal.SIGTERM)
        rc = first.wait(timeout=120)
        first.stderr.close()
    assert rc == 128 + signal.SIGTERM
