"""The in-context-learning score against per-token losses computed by hand (qkov.icl)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from qkov import QkovError
from qkov.data.probes import repeated_random_tokens
from qkov.icl import icl_from_logits, icl_score, icl_windows
from test_heads import V, build_induction_model

TOL = dict(atol=1e-4, rtol=1e-4)


def test_icl_windows_scale_the_sequel():
    """Tokens 50 and 500 of the sequel's 512-token context, widened to windows of n/16."""
    assert icl_windows(512) == ((34, 66), (480, 512))
    assert icl_windows(256) == ((17, 33), (240, 256))
    assert icl_windows(3) == ((1, 2), (2, 3))
    with pytest.raises(QkovError):
        icl_windows(2)


def test_icl_score_windows_and_spread():
    """Per sequence: mean loss over the late window minus over the early one; the score is
    their mean over sequences, the stderr their standard deviation / sqrt(n)."""
    model = build_induction_model()
    tokens = repeated_random_tokens(V, batch=8, half_len=16, seed=2)
    res = icl_score(model, tokens)
    with torch.no_grad():
        logits = model(tokens)
    loss = F.cross_entropy(logits[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none")
    torch.testing.assert_close(res.loss_by_position, loss.mean(0), **TOL)
    (a, b), (c, d) = res.early, res.late
    assert (res.early, res.late) == icl_windows(32) and res.n_sequences == 8
    per_seq = loss[:, c - 1 : d - 1].mean(1) - loss[:, a - 1 : b - 1].mean(1)
    assert res.score == pytest.approx(float(per_seq.mean()), abs=1e-5)
    assert res.stderr == pytest.approx(float(per_seq.std() / 8**0.5), abs=1e-5)
    assert res.loss_late < 0.01 and res.score < -2  # second half predicted in context
    custom = icl_from_logits(logits, tokens, early=(5, 6), late=(20, 22))
    assert custom.loss_early == pytest.approx(float(loss.mean(0)[4]), abs=1e-5)
    assert custom.loss_late == pytest.approx(float(loss.mean(0)[19:21].mean()), abs=1e-5)
    with pytest.raises(QkovError):
        icl_from_logits(logits, tokens, early=(5, 6), late=(20, 40))
    one = icl_from_logits(logits[:1], tokens[:1])
    assert math.isnan(one.stderr) and one.to_dict()["stderr"] is None  # JSON-safe
    assert len(res.to_dict()["loss_by_position"]) == 31
