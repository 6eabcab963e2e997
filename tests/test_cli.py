"""The CLI as a user meets it: commands that work, and one clear line for mistakes."""

import json
import subprocess
import sys

import pytest

from qkov.cli import main
from tiny import tiny_train


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qkov", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def run_dir(tiny_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "r"
    code = main(tiny_train(tiny_corpus, out, steps=6, eval_interval=3, ckpt_interval=3))
    assert code == 0
    return out


def test_train_info_sample(run_dir, capsys):
    assert json.loads((run_dir / "config.json").read_text())["d_vocab"] == 300
    assert main(["info", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "n_layers    1" in out and "params" in out and '"step": 6' in out
    assert main(["sample", str(run_dir), "--prompt", "def ", "--tokens", "5"]) == 0
    assert capsys.readouterr().out.startswith("def ")


def test_resume_extends_steps(run_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    assert (
        main(
            [
                "train",
                "--resume",
                "--steps",
                "9",
                "--out",
                str(copy),
                "--no-progress",
                "--corpus",
                json.loads((run_dir / "train_config.json").read_text())["corpus"],
            ]
        )
        == 0
    )
    last = (copy / "metrics.jsonl").read_text().splitlines()[-1]
    assert json.loads(last)["step"] == 9


def test_fine_tune_with_init_from(run_dir, tiny_corpus, tmp_path, capsys):
    """`qkov train --init-from RUN`: the config comes from RUN (model flags are not needed),
    the record says where the weights came from, and `qkov info` shows it."""
    out = tmp_path / "tuned"
    argv = ["train", "--init-from", str(run_dir), "--corpus", str(tiny_corpus), "--steps", "3"]
    argv += ["--batch-size", "2", "--lr", "1e-3", "--min-lr-ratio", "1", "--no-progress"]
    assert main([*argv, "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text()) == json.loads(
        (run_dir / "config.json").read_text()
    )
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["init_from"] == str(run_dir) and saved["min_lr_ratio"] == 1.0
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    assert f"init_from   {run_dir}" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, words",
    [
        (["info", "/nonexistent/run"], "does not exist"),
        (["train", "--out", "x", "--d-model", "-4"], "d_model must be positive"),
        (["train", "--out", "x", "--corpus", "/nonexistent/txt"], "is not a file, folder or glob"),
        (["sample", "/nonexistent/run"], "does not exist"),
        (["train", "--out", "x", "--init-from", "/nonexistent/run"], "does not exist"),
        (["train", "--out", "x", "--min-lr-ratio", "2"], "--min-lr-ratio must be in [0, 1]"),
    ],
)
def test_user_mistakes_get_one_line(args, words, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "qkov", *args], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_help_lists_commands():
    proc = run_cli("--help")
    assert proc.returncode == 0
    for cmd in ("train", "sample", "info"):
        assert cmd in proc.stdout
