"""scripts/copies_by_match.py (TRAINING.md's split of code's copies by match length and the
prior): each copy's row against a plain loop, and its bad input."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from factories import general_model, random_model, random_tokens

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
    """A small vocabulary, so copies of every match length occur; every copy is what a plain
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
    got = script.copies(model, prior, tokens, first)
    with torch.no_grad():
        logits = model(tokens)
        logp = torch.log_softmax(logits, -1)
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
            centred = logits[b, i] - logits[b, i].mean()
            lse = float(torch.logsumexp(centred, -1))
            want.append(
                (
                    row[i + 1] == c,
                    match,
                    float(p[b, i, c]),
                    float(logp[b, i, c]),
                    lse,
                    float(centred[c]),
                )
            )
    want = np.array(want)
    keys = ["right", "match", "prior", "logp", "log_sum_exp", "logit"]
    rows = np.stack([got[k] for k in keys], 1)
    assert rows.shape == want.shape and rows.shape[0] > 50
    assert (rows[:, :2] == want[:, :2]).all()
    assert set(rows[:, 1].astype(int)) == {1, 2, 3, 4}  # every match length occurs
    np.testing.assert_allclose(rows[:, 2:], want[:, 2:], rtol=1e-5, atol=1e-5)
    assert sorted(k for k in got if k.startswith("part:")) == [
        "part:attn0",
        "part:attn1",
        "part:embed",
    ]


@pytest.mark.parametrize("normalization", ["layernorm", "rmsnorm", "none"])
def test_the_parts_of_the_logits_sum_to_them_on_general_models(normalization):
    """MLPs, biases, W_pos in the stream and a learned norm: each part is a real write (not
    zero) and together they are the logits less their mean."""
    script = _script()
    model = general_model(2, normalization=normalization)
    tokens = random_tokens(model, batch=2)
    with torch.no_grad():
        logits, parts = script.layer_writes(model, tokens)
        want = model(tokens).float()
    assert sorted(parts) == ["attn0", "attn1", "bias", "embed", "mlp0", "mlp1"]
    torch.testing.assert_close(logits, want - want.mean(-1, keepdim=True))
    torch.testing.assert_close(sum(parts.values()), logits, atol=1e-4, rtol=1e-4)
    assert all(part.abs().max() > 1e-3 for part in parts.values())


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


def test_the_repeated_half_at_code_s_cost_weights_code_s_loss_by_the_repeat_s_tokens(capsys):
    """Tokens counted 5 (bin 1-9) and 50 (10-99) times: code copies only the first kind, so
    the repeat's 50-count tokens keep their own loss."""
    script = _script()
    counts = torch.tensor([5, 50, 0, 0])

    def kind(copied, logp):
        n = len(copied)
        return {
            "copied": np.array(copied),
            "logp": np.array(logp),
            "log_sum_exp": np.zeros(n),
            "logit": np.array(logp),
            "match": np.full(n, script.MAX_MATCH),
            "prior": np.zeros(n),  # implausible
        }

    code = kind([0, 0, 0], [-1.0, -2.0, -3.0])  # token 0 costs 2 nats on average in code
    code["match"][2] = 1  # not of the kind: left out, so 1.5 nats
    repeats = kind([0, 1, 1, 1], [-6.0, -4.0, -4.0, -4.0])
    script.by_count(code, repeats, counts)
    out = capsys.readouterr().out
    mixed = (1 * 1.5 + 3 * 4.0) / 4
    assert f"none): {mixed:.2f} nats, {mixed / np.log(4):.0%} of uniform" in out
    code_s, repeat_s = out.split("repeated half:")
    assert f"{'1-9':>17} {2:7,} {1.5:13.2f}" in code_s and "10-99" not in code_s
    assert f"{'1-9':>17} {1:7,} {6.0:13.2f}" in repeat_s
    assert f"{'10-99':>17} {3:7,} {4.0:13.2f}" in repeat_s
