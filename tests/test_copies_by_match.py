"""scripts/copies_by_match.py (TRAINING.md's split of code's copies by match length and the
prior): each copy's row against a plain loop, and its bad input."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from factories import random_model

ROOT = Path(__file__).parents[1]
SCRIPT = ROOT / "scripts" / "copies_by_match.py"


def _script():
    sys.path.insert(0, str(SCRIPT.parent))  # it imports corpus_copying, beside it
    try:
        spec = importlib.util.spec_from_file_location("copies_by_match", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return module


def test_each_copy_is_its_guess_match_length_and_both_models_probabilities():
    """A small vocabulary, so copies of every match length occur; every row is what a plain
    walk back along the sequence and the two models' own softmax give."""
    script = _script()
    model, prior = (
        random_model(2, d_vocab=5, n_ctx=40, seed=1),
        random_model(1, d_vocab=5, n_ctx=40),
    )
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(5, (3, 40), generator=g)
    tokens[0, 20:30] = tokens[0, 5:15]  # a long match
    first = 3
    rows = script.copies(model, prior, tokens, first)
    with torch.no_grad():
        logp = torch.log_softmax(model(tokens), -1)
        p = torch.softmax(prior(tokens), -1)
    want = []
    for b, row in enumerate(tokens.tolist()):
        for i in range(first, len(row) - 1):
            earlier = [j for j in range(i) if row[j] == row[i]]
            if not earlier:
                continue
            j = earlier[-1]
            match = 1
            while match < script.MAX_MATCH and j - match >= 0 and row[i - match] == row[j - match]:
                match += 1
            c = row[j + 1]
            want.append((row[i + 1] == c, match, float(p[b, i, c]), float(logp[b, i, c])))
    want = np.array(want)
    assert rows.shape == want.shape and rows.shape[0] > 50
    assert (rows[:, :2] == want[:, :2]).all()
    assert set(rows[:, 1].astype(int)) == {1, 2, 3, 4}  # every match length occurs
    np.testing.assert_allclose(rows[:, 2:], want[:, 2:], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "argv,says",
    [
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--model", "/nonexistent/run"], "/nonexistent/run does not exist"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, says):
    res = subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and says in lines[-1] and "Traceback" not in res.stderr, res.stderr
