"""scripts/corpus_copying.py (TRAINING.md's count of how often copying is right in the
corpus): its previous-occurrence index against a plain loop, and a run on a small corpus."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).parents[1]
SCRIPT = ROOT / "scripts" / "corpus_copying.py"


def test_previous_occurrence_is_each_tokens_most_recent_earlier_position():
    spec = importlib.util.spec_from_file_location("corpus_copying", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tokens = np.random.default_rng(0).integers(0, 7, size=300)
    last, want = {}, []
    for i, t in enumerate(tokens.tolist()):
        want.append(last.get(t, -1))
        last[t] = i
    assert module.previous_occurrence(tokens).tolist() == want


def _right(tmp_path: Path, text: str) -> float:
    """The script's share of right guesses on a one-file corpus of `text`."""
    tmp_path.mkdir()
    (tmp_path / "a.txt").write_text(text, encoding="utf-8")
    env = {"QKOV_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--corpus", str(tmp_path / "a.txt"), "--vocab-size", "300"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    return float(out.split("the token after it is the next token at ")[1].split("%")[0])


def test_copying_is_counted_on_corpora_that_repeat_and_that_do_not(tmp_path):
    """One phrase over and over: every guess is right. Words drawn at random from a few:
    a guess is right about as often as a random word is the guessed one."""
    assert _right(tmp_path / "same", "def f(x):\n    return x + 1\n" * 200) == 100.0
    words = np.random.default_rng(0).choice(["alpha", "beta", "gamma", "delta"], size=3000)
    right = _right(tmp_path / "random", " ".join(words))
    assert 10.0 < right < 60.0, right


@pytest.mark.parametrize(
    "argv,says",
    [
        (["--corpus", "/nonexistent/corpus"], "is not a file, folder or glob that exists"),
        (["--window", "0"], "--window must be at least 1"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, says):
    res = subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and says in lines[-1] and "Traceback" not in res.stderr, res.stderr
