"""Head classification on hand-built models with planted heads (qkov.classification)."""

from __future__ import annotations

import pytest

from qkov import AttnOnlyTransformer, ModelConfig
from qkov.classification import Thresholds, classify_heads, knockout_partners
from qkov.data.probes import induction_probe
from qkov.heads import head_scores
from test_heads import N_CTX, V, build_induction_model


def test_classifier_labels_handbuilt_heads_and_finds_partner():
    model = build_induction_model()
    cls = classify_heads(model, batch=16, seed=0, n_baseline=50)
    prev, ind = cls.record(0, 0), cls.record(1, 0)
    assert prev.label == "previous_token"
    assert prev.decided_by == "previous_token" and prev.threshold == Thresholds().previous_token
    assert ind.label == "induction" and ind.decided_by == "induction"
    assert ind.scores["induction"] > 0.95 and ind.scores["copying"] > 0.9
    assert [p.name for p in ind.partners] == ["L0H0"]  # L0H1 is at the random baseline
    assert ind.k_composition[0].name == "L0H0" and ind.k_composition[0].z > 3
    assert ind.qk_term_eigenvalue_score == pytest.approx(1.0, abs=1e-3)
    for name in ("L0H1", "L1H1"):
        r = cls.record(int(name[1]), int(name[3]))
        assert r.label not in ("induction", "previous_token") and r.k_composition == ()
    assert [r.name for r in cls.with_label("induction")] == ["L1H0"]
    d = cls.to_dict()
    assert d["records"][2]["partners"] == ["L0H0"]
    assert "L1H0" in cls.table() and "L0H0 (" in cls.table()
    assert "first the partner, the previous-token head" in cls.table()


def test_random_model_has_no_induction_or_previous_token_head():
    cfg = ModelConfig(n_layers=2, n_heads=4, d_model=64, n_ctx=64, d_vocab=128, init_std=0.2)
    cls = classify_heads(AttnOnlyTransformer(cfg), batch=8, n_baseline=20)
    assert not cls.with_label("induction") and not cls.with_label("previous_token")
    assert "partners:" not in cls.table()  # no induction head, no partner column to explain


def test_knockout_partner_is_the_previous_token_head():
    """Zeroing the hand-built previous-token head L0H0 breaks the induction head L1H0 (its
    keys no longer hold the previous token); zeroing L0H1 changes nothing. classify_heads
    records that ranking for each induction head."""
    model = build_induction_model()
    probe = induction_probe(V, 16, N_CTX, seed=0)
    ranked = knockout_partners(model, 1, 0, probe.tokens, probe.half_lens)
    assert [p.name for p in ranked] == ["L0H0", "L0H1"]
    assert ranked[0].drop > 0.5 and abs(ranked[1].drop) < 1e-3
    clean = head_scores(model, probe.tokens, half_len=probe.half_lens).induction[1, 0]
    assert ranked[0].induction_score == pytest.approx(float(clean) - ranked[0].drop)
    cls = classify_heads(model, batch=16, seed=0, n_baseline=50)
    assert cls.record(1, 0).knockout[0].name == "L0H0"
    assert cls.record(0, 0).knockout == ()  # only induction heads are knocked against


def test_old_import_path_still_works():
    """qkov.heads hands out what moved to qkov.classification (analyze.py imports it there)."""
    import qkov.heads

    assert qkov.heads.classify_heads is classify_heads
    assert qkov.heads.HeadRecord.__module__ == "qkov.classification"
    with pytest.raises(AttributeError):
        qkov.heads.no_such_name  # noqa: B018


def test_knockouts_of_several_heads_share_one_pass_per_earlier_head(monkeypatch):
    """`knockouts` of heads in layers 1 and 2 equals zeroing each earlier head in a full
    forward pass and scoring each later head's pattern, and runs one pass per head below
    the last layer asked for (plus the clean one), not one per (earlier, later) pair."""
    from qkov.heads import induction_score
    from qkov.knockouts import knockouts

    cfg = ModelConfig(n_layers=4, n_heads=3, d_model=48, n_ctx=32, d_vocab=50, init_std=0.3)
    model = AttnOnlyTransformer(cfg)
    probe = induction_probe(cfg.d_vocab, 4, 32, seed=1)
    heads = [(1, 0), (2, 1), (2, 2)]
    calls = []
    run = model.run_with_hooks
    monkeypatch.setattr(model, "run_with_hooks", lambda *a, **k: calls.append(1) or run(*a, **k))
    got = knockouts(model, heads, probe.tokens, probe.half_lens)
    assert len(calls) == 1 + 2 * cfg.n_heads  # layers 0 and 1 knocked out, layer 3 never run
    monkeypatch.undo()

    def score(l: int, h: int, hooks: dict) -> float:
        _, cache = model.run_with_hooks(probe.tokens, hooks=hooks, cache_names=[f"pattern.{l}"])
        return float(induction_score(cache[f"pattern.{l}"], probe.tokens, probe.half_lens)[h])

    def zero(h0):
        def hook(z, name):
            z = z.clone()
            z[:, h0] = 0
            return z

        return hook

    assert sorted(got) == heads
    for l, h in heads:
        assert sorted(p.name for p in got[l, h]) == [
            f"L{l0}H{h0}" for l0 in range(l) for h0 in range(cfg.n_heads)
        ]
        drops = [p.drop for p in got[l, h]]
        assert drops == sorted(drops, reverse=True)
        for p in got[l, h]:
            want = score(l, h, {f"z.{p.layer}": zero(p.head)})
            assert p.induction_score == pytest.approx(want, abs=1e-6)
            assert p.drop == pytest.approx(score(l, h, {}) - want, abs=1e-6)
        alone = knockout_partners(model, l, h, probe.tokens, probe.half_lens)
        by_name = {p.name: p.induction_score for p in got[l, h]}
        assert {p.name: pytest.approx(p.induction_score, abs=1e-6) for p in alone} == by_name


def test_knockouts_past_the_budget_run_over_the_likeliest_partners(monkeypatch):
    """Past budget.PARTNER_BUDGET the knock-outs run over the previous-token heads first (the
    hand-built L0H0 here), and the classification names the heads it knocked out; without
    knock-outs no record has any."""
    import qkov.budget

    model = build_induction_model()
    full = classify_heads(model, batch=16, seed=0, n_baseline=50)
    assert full.knockout_heads is None and len(full.record(1, 0).knockout) == 2
    one = qkov.budget.knockout_cost(model.cfg, 0, 1, 16 * N_CTX, N_CTX)
    monkeypatch.setattr(qkov.budget, "PARTNER_BUDGET", one)  # room for one pass
    cut = classify_heads(model, batch=16, seed=0, n_baseline=50)
    assert cut.knockout_heads == ((0, 0),)
    assert [p.name for p in cut.record(1, 0).knockout] == ["L0H0"]
    assert cut.record(1, 0).knockout[0] == full.record(1, 0).knockout[0]
    assert "only 1 earlier heads were knocked out (L0H0:" in cut.table()
    assert cut.to_dict()["knockout_heads"] == [[0, 0]]
    none = classify_heads(model, batch=16, seed=0, n_baseline=50, knockout=False)
    assert all(r.knockout == () for r in none.records) and none.knockout_heads is None


def test_qkov_heads_says_each_part_as_it_starts_on_stderr(tmp_path, capsys):
    """`qkov heads` on a 1B model runs for minutes before its table: each part is a line on
    stderr as it starts (the knock-outs say how many), and stdout keeps the table alone."""
    import qkov
    from qkov.cli import main

    qkov.save_model(build_induction_model(), tmp_path / "m")
    assert main(["heads", str(tmp_path / "m")]) == 0
    out, err = capsys.readouterr()
    parts = [line.split(": ", 1)[1] for line in err.splitlines()]
    assert parts[0] == "head scores on the repeated-token probe (4 heads)"
    assert "K-composition into 1 induction head (the partners)" in parts  # nothing else shown
    assert "knock-outs of 2 earlier heads for 1 induction heads" in parts
    assert "knock-outs" not in out and out.startswith(f"{tmp_path / 'm'}: 2 layers x 2 heads")


def _with_rival() -> AttnOnlyTransformer:
    """build_induction_model with a rival for L0H0: L0H1 attends to position 0 and writes its
    token where L0H0 writes the previous token, so L1H0's key reads both; the rival's part is
    the same at every source, so the induction pattern does not change. L0H0 also gets
    inert weight (rows of W_V that read position dims, empty in a shortformer's stream,
    into output dims no key reads): its K-composition into L1H0 falls below the rival's."""
    import torch

    model = build_induction_model()
    w = {k: v.clone() for k, v in model.weights().items()}
    for k in ("W_Q", "W_K", "W_V", "W_O"):
        w[k][0, 1].zero_()
    tok, S, P, O = torch.arange(V), 3 * V, V, 2 * V
    c = 8.0
    w["W_Q"][0, 1][S : S + N_CTX, 0] = c  # every query ...
    w["W_K"][0, 1][S, 0] = c  # ... matches position 0
    w["W_V"][0, 1][tok, tok] = 1
    w["W_O"][0, 1][tok, P + tok] = 1
    d_head = model.cfg.d_head
    w["W_V"][0, 0][S, d_head - 1] = 1.0  # W_OV gains a rank-1 part as large as its copy
    w["W_O"][0, 0][d_head - 1, O : O + V] = 1.0
    model.load_weights(w)
    return model


def test_partner_is_the_previous_token_head_though_a_rival_reads_higher():
    """The key of L1H0 reads the rival L0H1 more than L0H0 (K-composition), but L0H0 is the
    previous-token head: it is the partner, first among the partners, and the one the
    summary, the JSON and the training probe's circuit name."""
    from qkov.head_records import induction_circuits
    from qkov.induction_circuit import induction_circuit

    model = _with_rival()
    cls = classify_heads(model, batch=16, seed=0, n_baseline=50)
    ind = cls.record(1, 0)
    assert ind.label == "induction" and ind.scores["induction"] > 0.95
    assert cls.record(0, 0).label == "previous_token"
    assert cls.record(0, 1).scores["previous_token"] < 0.2
    rival, prev = ind.k_composition[0], ind.k_composition[1]
    assert (rival.name, prev.name) == ("L0H1", "L0H0")
    assert rival.score > prev.score and prev.above_baseline
    assert ind.partner == prev and [p.name for p in ind.partners] == ["L0H0", "L0H1"]
    assert "L1H0 induction" in repr(cls) and "(partner L0H0," in repr(cls)
    assert cls.to_dict()["records"][2]["partner"]["layer"] == 0
    assert cls.to_dict()["records"][2]["partner"]["head"] == 0
    (circuit,) = induction_circuits(cls)
    assert circuit["partner_head"] == [0, 0] and circuit["k_composition"] == prev.score
    s = head_scores(model, batch=16)
    c = induction_circuit(model, s.induction, s.previous_token)
    assert c["induction_head"] == "L1H0" and c["partner_head"] == "L0H0"
    assert c["k_composition"] == pytest.approx(prev.score, rel=1e-5)


def test_choose_partner():
    import torch

    from qkov.composition import choose_partner

    k = torch.tensor([[0.10, 0.09, 0.05], [0.20, 0.02, 0.08]])
    z = (k - 0.04) / 0.01  # above the baseline (z >= 3): 0.10, 0.09, 0.20, 0.08
    prev = torch.tensor([[0.1, 0.9, 0.95], [0.2, 0.99, 0.5]])
    # The previous-token heads above the baseline are (0, 1) and (1, 2); the key reads (0, 1)
    # more. (0, 2) and (1, 1) score higher as previous-token heads but are at the baseline.
    assert choose_partner(k, z, prev, 3.0, 0.4) == (0, 1)
    # no previous-token head: the largest k above the baseline; none above: the largest k
    assert choose_partner(k, z, prev.clamp(max=0.3), 3.0, 0.4) == (1, 0)
    assert choose_partner(k, z - 100, prev, 3.0, 0.4) == (1, 0)
    k2 = torch.tensor([[0.10, 0.30], [0.20, 0.02]])
    z2 = torch.tensor([[9.0, 1.0], [9.0, 9.0]])  # (0, 1) has the largest k but is at baseline
    assert choose_partner(k2, z2, torch.zeros(2, 2), 3.0, 0.4) == (1, 0)
    nan = torch.tensor([[float("nan"), 0.5]])
    nine = torch.tensor([[9.0, 9.0]])  # a NaN score (no such pair) is never the partner
    assert choose_partner(nan, nine, torch.tensor([[0.9, 0.9]]), 3.0, 0.4) == (0, 1)
