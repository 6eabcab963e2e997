"""The in-context-learning score against per-token losses computed by hand (qkov.icl)."""

from __future__ import annotations

import json
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


def test_icl_from_the_losses_of_head_scores_pass_without_a_second_pass(tmp_path, monkeypatch):
    """head_scores(token_losses=True) keeps the loss of each token from its own pass (the
    logits a plain forward gives); `icl_from_losses` of them is icl_score. `qkov heads` on
    a folder without text evaluates on the probe it scores heads on, and reads the ICL
    score from that pass: the model's forward is not run a second time."""
    from qkov import save_model
    from qkov.cli import main
    from qkov.data.probes import induction_probe
    from qkov.heads import head_scores
    from qkov.icl import icl_from_losses
    from qkov.loss import token_losses

    model = build_induction_model()
    probe = induction_probe(V, 16, 32, seed=0)
    with torch.no_grad():
        want = token_losses(model(probe.tokens), probe.tokens)
    s = head_scores(model, probe.tokens, half_len=probe.half_lens, token_losses=True)
    torch.testing.assert_close(s.token_losses, want, atol=1e-5, rtol=1e-5)
    assert head_scores(model, probe.tokens).token_losses is None
    a, b = icl_from_losses(s.token_losses), icl_score(model, probe.tokens)
    assert a.score == pytest.approx(b.score, abs=1e-5) and (a.early, a.late) == (b.early, b.late)

    save_model(model, tmp_path / "m")
    ev = induction_probe(V, 16, min(128, model.cfg.n_ctx), seed=0).tokens  # qkov heads' probe
    expected = icl_score(model, ev).score
    calls = []
    forward = type(model).forward
    monkeypatch.setattr(type(model), "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    assert main(["heads", str(tmp_path / "m"), "--json", str(tmp_path / "h.json")]) == 0
    assert calls == []  # the ICL score read the probe pass (run_with_hooks), no model(tokens)
    icl = json.loads((tmp_path / "h.json").read_text())["icl"]
    assert icl["score"] == pytest.approx(expected, abs=1e-5)
    assert main(["heads", str(tmp_path / "m"), "--seed", "1"]) == 0  # another probe: a pass
    assert calls == [1]


def test_qkov_heads_on_a_text_reads_its_icl_score_from_the_text_pass(tmp_path, monkeypatch):
    """With --text-file, `qkov heads` scores the heads on the text and reads the ICL score from
    that pass's losses (no second forward pass): the same score as icl_score on those
    windows."""
    import inspect

    from qkov.checkpoint import load
    from qkov.cli import main
    from qkov.data.evaluation import evaluation_set
    from qkov.demo_models import shipped

    folder = shipped("attn2")
    text = tmp_path / "t.txt"
    text.write_text(inspect.getsource(json) * 2, encoding="utf-8")
    model = load(folder)
    ev = evaluation_set(model, folder, text=text.read_text(encoding="utf-8"))
    expected = icl_score(model, ev.tokens).score
    calls = []
    forward = type(model).forward
    monkeypatch.setattr(type(model), "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    out = tmp_path / "h.json"
    assert main(["heads", str(folder), "--text-file", str(text), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert calls == [] and result["text_scores"]["measured_on"] == "tokens"
    assert result["icl"]["n_sequences"] == ev.tokens.shape[0] > 1
    assert result["icl"]["score"] == pytest.approx(expected, abs=1e-5)
