"""The induction circuit's statistics, the repetition test and kept snapshots, checked on
a hand-built induction model and against a training run's own log."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from factories import add_start_token, general_model, induction_model, probed_run
from qkov.composition import baseline_scores
from qkov.config import ModelConfig
from qkov.errors import QkovError
from qkov.induction_circuit import induction_circuit
from qkov.repetition import loss_by_count, pool_count_bins, repetition_test
from qkov.snapshots import list_snapshots, load_snapshot, snapshot_steps
from qkov.training_probe import training_probe


def test_planted_circuit_is_found_with_its_partner():
    model = induction_model(noise=0.02)
    scores = torch.tensor([[0.0, 0.0], [0.9, 0.1]])
    prev = torch.tensor([[1.0, 0.0], [0.0, 0.0]])  # L0H0 attends to the previous position
    c = induction_circuit(model, scores, prev)
    assert c["induction_head"] == "L1H0" and c["partner_head"] == "L0H0"
    # The key of L1H0 reads exactly what L0H0 writes: far above random weights of the same
    # shapes (the baseline qkov.composition uses), where the random head L1H1 stays.
    base = baseline_scores(model.cfg.d_model, model.cfg.d_head, 200, 0)["k"]
    assert c["k_composition"] > float(base.mean() + 6 * base.std())
    noise_only = induction_circuit(model, torch.tensor([[0.0, 0.0], [0.1, 0.9]]), prev)
    assert noise_only["induction_head"] == "L1H1"
    assert noise_only["k_composition"] < float(base.mean() + 3 * base.std())
    assert c["qk_eigenvalue"] > 0.9  # token matching: the planted QK term is c * identity
    assert c["ov_eigenvalue"] > 0.9  # copying: W_E W_OV W_U is about the identity


def test_pinned_heads_give_that_pair_s_circuit():
    """`head` / `partner` (qkov forming --head, --partner): the circuit of the heads given,
    whatever scores best. Pinned to the best head and its chosen partner, the same record
    and the head's own score; pinned to the planted head with the random L0H1 as partner,
    that pair's K-composition as `composition_score` gives it and no token matching."""
    from qkov.circuits import W_OV, W_QK
    from qkov.composition import composition_score

    model = induction_model(noise=0.02)
    scores = torch.tensor([[0.0, 0.0], [0.9, 0.1]])
    prev = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    best = induction_circuit(model, scores, prev)
    same = induction_circuit(model, scores, prev, head=(1, 0), partner=(0, 0))
    assert "induction_head_score" not in best
    assert same == {**best, "induction_head_score": pytest.approx(0.9)}
    other = induction_circuit(model, scores, prev, head=(1, 0), partner=(0, 1))
    assert (other["induction_head"], other["partner_head"]) == ("L1H0", "L0H1")
    k = composition_score(W_OV(model)[0, 1], W_QK(model)[1, 0].T)
    assert other["k_composition"] == pytest.approx(float(k))
    assert other["qk_eigenvalue"] < 0.5 < best["qk_eigenvalue"]  # L0H1 writes no token
    assert other["ov_eigenvalue"] == best["ov_eigenvalue"]  # the same head's OV circuit
    noise = induction_circuit(model, scores, prev, head=(1, 1))  # its partner chosen for it
    assert noise["induction_head"] == "L1H1" and noise["induction_head_score"] == pytest.approx(0.1)
    # as if L1H1 scored best: the same partner, by the same rule
    as_best = induction_circuit(model, torch.tensor([[0.0, 0.0], [0.1, 0.9]]), prev)
    assert {k: noise[k] for k in as_best} == as_best


@pytest.mark.parametrize(
    "head, partner, words",
    [
        ((0, 1), None, "--head L0H1 is not a head this model can pin: give one of layers 1-1"),
        ((2, 0), None, "--head L2H0 is not a head"),
        ((1, 2), None, "heads 0-1"),
        ((1, 0), (1, 1), "--partner L1H1 is not an earlier head than --head L1H0"),
        (None, (0, 0), "--partner needs --head"),
    ],
)
def test_a_head_that_cannot_be_pinned_is_one_clear_error(head, partner, words):
    from qkov.errors import QkovError

    model = induction_model()
    with pytest.raises(QkovError, match=re.escape(words)):
        induction_circuit(model, torch.zeros(2, 2), torch.zeros(2, 2), head, partner)


def test_circuit_needs_two_layers():
    c = induction_circuit(
        induction_model().__class__(ModelConfig(n_layers=1, d_vocab=8, d_model=8, n_heads=2)),
        torch.zeros(1, 2),
        torch.zeros(1, 2),
    )
    assert c["induction_head"] is None and math.isnan(c["k_composition"])


def test_repetition_test_scores_the_planted_head_and_its_losses():
    model = induction_model(noise=0.02)
    with torch.no_grad():
        model.W_U.mul_(20.0)  # sharp logits: the copied token wins by a wide margin
    r = repetition_test(model, batch=10, half_len=6, seed=0)
    assert r.induction_scores.shape == (2, 2)
    (layer, head, score), *_ = r.top_heads(1)
    assert (layer, head) == (1, 0) and score > 0.9
    # The planted head predicts the repeat; without it the repeat is no easier.
    assert r.repeated_half_loss < r.first_half_loss / 2
    with torch.no_grad():
        model.W_O[1, 0].zero_()
    knocked = repetition_test(model, batch=10, half_len=6, seed=0)
    assert knocked.repeated_half_loss > 0.8 * knocked.first_half_loss
    assert r.uniform_loss == pytest.approx(math.log(12))


def test_repetition_losses_are_the_halves_of_the_token_losses():
    from qkov.data.probes import repeated_random_tokens
    from qkov.loss import token_losses

    model = induction_model(noise=0.3, seed=1)
    r = repetition_test(model, batch=4, half_len=5, seed=3)
    tokens = repeated_random_tokens(12, 4, 5, 3)
    with torch.no_grad():
        losses = token_losses(model(tokens), tokens)  # [4, 9]: column t-1 predicts token t
    assert r.first_half_loss == pytest.approx(float(losses[:, 0:4].mean()), rel=1e-5)
    assert r.repeated_half_loss == pytest.approx(float(losses[:, 5:9].mean()), rel=1e-5)


def test_repeated_token_logit_splits_the_repeated_half_loss_exactly():
    """loss = log_sum_exp - logit on the repeated half, the writers sum to logit, and the
    planted induction head is the writer that lifts the repeated token most."""
    model = induction_model(noise=0.02)
    with torch.no_grad():
        model.W_U.mul_(20.0)
    r = repetition_test(model, batch=10, half_len=6, seed=0)
    x = r.repeated_token_logit
    assert x.log_sum_exp - x.logit == pytest.approx(r.repeated_half_loss, rel=1e-5)
    assert sum(x.writers.values()) == pytest.approx(x.logit, rel=1e-4)
    assert set(x.writers) == {"embed", "L0H0", "L0H1", "L1H0", "L1H1"}
    (name, value), *_ = x.top(1)
    assert name == "L1H0" and value > 0.5 * x.logit
    # The strongest rival: the highest logit of another token at each prediction, less the
    # mean logit, averaged; its writers sum to it. Here it is the current token, which the
    # planted direct path (W_E W_U = 20 I on the tokens) predicts: the embedding writes it,
    # and the induction head hardly moves it.
    assert x.rival_logit == pytest.approx(_rival_logit(model, 10, 6, 0), rel=1e-5)
    assert sum(x.rival_writers.values()) == pytest.approx(x.rival_logit, rel=1e-4)
    assert set(x.rival_writers) == set(x.writers)
    assert max(x.rival_writers, key=x.rival_writers.get) == "embed"
    assert abs(x.rival_writers["L1H0"]) < x.writers["L1H0"] / 4


def test_loss_without_a_layers_direct_write_is_the_planted_circuits_counterfactual():
    """Taking out the induction head's layer's write makes the repeat several times harder;
    taking out the embedding's (the planted direct path W_E W_U = 20 I, which guesses
    the current token: the rival) makes it easier; layer 0's previous-token head writes
    where W_U does not read, so taking it out changes nothing; a layer that writes nothing
    changes nothing, exactly."""
    model = induction_model(noise=0.02)
    with torch.no_grad():
        model.W_U.mul_(20.0)
    r = repetition_test(model, batch=10, half_len=6, seed=0)
    without = r.repeated_token_logit.loss_without
    assert set(without) == {"embed", "attn0", "attn1"}
    assert without["attn1"] > 3 * r.repeated_half_loss
    assert without["embed"] < r.repeated_half_loss - 1
    assert without["attn0"] == pytest.approx(r.repeated_half_loss, abs=0.2)
    with torch.no_grad():
        model.W_O[0].zero_()
    r = repetition_test(model, batch=10, half_len=6, seed=0)
    assert r.repeated_token_logit.loss_without["attn0"] == pytest.approx(r.repeated_half_loss)


@pytest.mark.parametrize("rows", [1, 3])
def test_the_split_a_few_sequences_at_a_time_is_the_split_of_all(rows, monkeypatch):
    """At a large vocabulary the per-writer losses are formed a few sequences at a time
    (LOGIT_ELEMENTS): one at a time, or 3 + 3 + 3 + 1 of 10, gives the same split."""
    import qkov.repetition as R

    model = induction_model(noise=0.02)
    whole = repetition_test(model, batch=10, half_len=6, seed=0).repeated_token_logit
    assert R.LOGIT_ELEMENTS >= 10 * 5 * model.cfg.d_vocab  # all ten at once here
    monkeypatch.setattr(R, "LOGIT_ELEMENTS", rows * 5 * model.cfg.d_vocab)
    part = repetition_test(model, batch=10, half_len=6, seed=0).repeated_token_logit
    assert part.loss_without == pytest.approx(whole.loss_without, rel=1e-6)
    assert part.rival_writers == pytest.approx(whole.rival_writers, rel=1e-6, abs=1e-7)


def _rival_logit(model, batch: int, half_len: int, seed: int) -> float:
    """The repetition test's rival logit, computed here from the logits alone."""
    from qkov.data.probes import repeated_random_tokens

    tokens = repeated_random_tokens(model.cfg.d_vocab, batch, half_len, seed)
    with torch.no_grad():
        lg = model(tokens)[:, half_len : 2 * half_len - 1].double()
    lg = lg - lg.mean(-1, keepdim=True)
    t = tokens[:, half_len + 1 :]
    return float(lg.scatter(-1, t[..., None], -torch.inf).max(-1).values.mean())


def test_loss_by_count_bins_each_prediction_by_its_tokens_training_count():
    counts = torch.tensor([0, 3, 9, 10, 99, 100, 12345, 7])  # [d_vocab]
    targets = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 6], [7, 0, 1, 3]])
    losses = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    bins = loss_by_count(losses, -losses, 2 * losses, targets, counts)
    got = [(b.label, b.count_from, b.count_below, b.predictions, b.loss) for b in bins]
    assert got == [  # [0, 1), [1, 10), [10, 100), [100, 1000): 100 alone; none in 1,000s
        ("never", 0, 1, 2, (0 + 9) / 2),
        ("1-9", 1, 10, 4, (1 + 2 + 8 + 10) / 4),
        ("10-99", 10, 100, 3, (3 + 4 + 11) / 3),
        ("100-999", 100, 1000, 1, 5.0),
        ("10,000-99,999", 10000, 100000, 2, (6 + 7) / 2),
    ]
    for b in bins:  # the logits are binned with the losses: each the same mean, scaled
        assert (b.first_logit, b.repeated_logit, b.lift) == (-b.loss, 2 * b.loss, 3 * b.loss)
    assert sum(b.predictions * b.loss for b in bins) / 12 == pytest.approx(float(losses.mean()))
    top = loss_by_count(losses, losses, losses, targets, torch.full((8,), 10**6))
    assert [(b.label, b.predictions) for b in top] == [("1,000,000-9,999,999", 12)]


def test_pooled_bins_are_the_bins_of_all_predictions_together():
    g = torch.Generator().manual_seed(0)
    counts = torch.randint(0, 3000, (50,), generator=g)
    parts = [
        (torch.randint(0, 50, (n,), generator=g), torch.randn(3, n, generator=g))
        for n in (7, 30, 1)
    ]
    each = [loss_by_count(v[0], v[1], v[2], t, counts) for t, v in parts]
    whole = loss_by_count(
        *torch.cat([v for _, v in parts], 1), torch.cat([t for t, _ in parts]), counts
    )
    pooled = pool_count_bins(each)
    assert [(b.count_from, b.predictions) for b in pooled] == [
        (b.count_from, b.predictions) for b in whole
    ]
    for p, w in zip(pooled, whole, strict=True):
        assert (p.loss, p.first_logit, p.repeated_logit) == pytest.approx(
            (w.loss, w.first_logit, w.repeated_logit)
        )


def test_repetition_test_splits_the_repeated_half_by_training_count():
    """With the run's token counts the bins cover every prediction of the repeated half and
    average to its loss; without them there is no split (and the record says None)."""
    model = induction_model(noise=0.3, seed=1)
    assert repetition_test(model, batch=4, half_len=5, seed=3).by_training_count is None
    model.token_counts = torch.tensor([0, 1, 5, 20, 300, 300, 4000, 4000, 4000, 50, 2, 0])
    r = repetition_test(model, batch=4, half_len=5, seed=3)
    assert sum(b.predictions for b in r.by_training_count) == 4 * (5 - 1)
    bare = repetition_test(model, batch=4, half_len=5, seed=3, split=False)  # neither split
    assert bare.by_training_count is None and bare.repeated_token_logit is None
    assert bare.repeated_half_loss == r.repeated_half_loss
    mean = sum(b.predictions * b.loss for b in r.by_training_count) / (4 * 4)
    assert mean == pytest.approx(r.repeated_half_loss, rel=1e-5)
    d = r.to_dict()["by_training_count"]
    assert [b["label"] for b in d] == [b.label for b in r.by_training_count]
    # Without the planted head the repeat adds nothing: the same token, the same logit
    # wherever it is predicted from (the heads attend by position, so only the noise moves
    # it); with it, the repeat lifts every bin's token.
    planted = induction_model(noise=0.02)
    planted.token_counts = model.token_counts
    with torch.no_grad():
        planted.W_U.mul_(20.0)  # sharp logits: the copied token wins by a wide margin
    lifted = repetition_test(planted, batch=4, half_len=5, seed=3).by_training_count
    assert len(lifted) >= 4 and all(b.lift > 10 for b in lifted)
    with torch.no_grad():
        planted.W_O[1, 0].zero_()
    flat = repetition_test(planted, batch=4, half_len=5, seed=3).by_training_count
    assert all(abs(b.lift) < 1 for b in flat)
    first = r.by_training_count[0]
    assert f"by training count: {first.label} {first.loss:.2f} ({first.predictions})" in repr(r)


def test_qkov_heads_repetition_prints_the_loss_by_training_count(tmp_path, capsys):
    """`qkov heads --repetition` on a run with token_counts.json prints a row per count bin
    (the record's numbers; the shares of the loss sum to 1) and writes them to --json."""
    from qkov.checkpoint import save_model, write_token_counts
    from qkov.cli import main
    from qkov.model import Transformer

    cfg = ModelConfig(n_layers=1, n_heads=2, d_model=16, n_ctx=100, d_vocab=64, seed=2)
    save_model(Transformer(cfg), tmp_path / "m")
    assert main(["heads", str(tmp_path / "m"), "--repetition"]) == 0
    assert "by how often the repeated token occurred in training" not in capsys.readouterr().out
    counts = [0] * 4 + [7] * 20 + [450] * 30 + [20000] * 10
    write_token_counts(tmp_path / "m" / "token_counts.json", counts, "stdlib")
    assert (
        main(["heads", str(tmp_path / "m"), "--repetition", "--json", str(tmp_path / "h.json")])
        == 0
    )
    out = capsys.readouterr().out
    rep = json.loads((tmp_path / "h.json").read_text())["repetition"]
    bins, rival = rep["by_training_count"], rep["repeated_token_logit"]["rival_logit"]
    assert f"highest logit at each prediction) {rival:.2f}, by writer: " in out
    without = rep["repeated_token_logit"]["loss_without"]
    assert list(without) == ["embed", "attn0"]
    assert f"frozen): embed {without['embed']:.2f} (" in out
    assert [b["label"] for b in bins] == ["never", "1-9", "100-999", "10,000-99,999"]
    table = out.split("logit: first half  repeat   lift\n")[1]
    rows = [line.split() for line in table.splitlines()[: len(bins)]]
    assert [(r[0], int(r[1]), float(r[2])) for r in rows] == [
        (b["label"], b["predictions"], round(b["loss"], 2)) for b in bins
    ]
    assert [[float(x) for x in r[4:]] for r in rows] == [
        [round(b["first_logit"], 2), round(b["repeated_logit"], 2), round(b["lift"], 2)]
        for b in bins
    ]
    assert sum(int(r[3].rstrip("%")) for r in rows) == pytest.approx(100, abs=len(bins))


def test_qkov_heads_repetition_seeds_gives_the_means_of_the_tests_of_each_seed(tmp_path, capsys):
    """`--repetition-seeds 3` prints and writes each head's score and each half's loss as the
    mean of `repetition_test` at seeds 0, 1 and 2, run here one by one; 0 is refused."""
    from qkov.checkpoint import load, save_model
    from qkov.cli import main
    from qkov.model import Transformer

    cfg = ModelConfig(
        n_layers=2, n_heads=2, d_model=16, n_ctx=100, d_vocab=64, seed=4, init_std=1.0
    )
    save_model(Transformer(cfg), tmp_path / "m")  # (sharp patterns: the seeds' scores differ)
    model = load(tmp_path / "m", for_analysis=True)
    tests = [repetition_test(model, seed=s, split=False) for s in range(3)]
    assert not torch.allclose(tests[0].induction_scores, tests[1].induction_scores, atol=1e-3)
    out_json = tmp_path / "h.json"
    assert (
        main(["heads", str(tmp_path / "m"), "--repetition-seeds", "3", "--json", str(out_json)])
        == 0
    )
    out = capsys.readouterr().out
    rep = json.loads(out_json.read_text())["repetition"]
    mean = rep["mean_over_seeds"]
    scores = torch.stack([t.induction_scores for t in tests]).mean(0)
    torch.testing.assert_close(torch.tensor(mean["induction_scores"]), scores)
    repeated = sum(t.repeated_half_loss for t in tests) / 3
    assert mean["repeated_half_loss"] == pytest.approx(repeated, rel=1e-6)
    assert mean["first_half_loss"] == pytest.approx(
        sum(t.first_half_loss for t in tests) / 3, rel=1e-6
    )
    assert [b["repeated_half_loss"] for b in mean["by_seed"]] == pytest.approx(
        [t.repeated_half_loss for t in tests], rel=1e-6
    )
    assert len({round(t.repeated_half_loss, 6) for t in tests}) == 3  # the seeds differ
    assert rep["seed"] == 0 and rep["repeated_half_loss"] == pytest.approx(
        tests[0].repeated_half_loss
    )
    assert f"the mean of seeds 0 to 2): loss on the first half {mean['first_half_loss']:.2f}" in out
    assert f"on the repeated half {repeated:.2f}" in out
    table = out.split("mean of 3  probe seeds 0-7: min  mean  max\n")[1]
    row = next(line for line in table.splitlines() if line.startswith("L1H1 "))
    assert float(row.split()[1]) == pytest.approx(float(scores[1, 1]), abs=5e-4)
    assert main(["heads", str(tmp_path / "m"), "--repetition-seeds", "0"]) == 2
    assert "--repetition-seeds must be at least 1" in capsys.readouterr().err


@pytest.mark.parametrize(
    "shape",
    [{}, {"normalization": "rmsnorm", "positional": "rotary", "bias": False, "act_fn": "silu"}],
    ids=["layernorm-mlp-bias", "rmsnorm-rotary"],
)
def test_repeated_token_logit_is_exact_on_general_models(shape):
    model = general_model(**shape)
    r = repetition_test(model, batch=3, half_len=4, seed=1)
    x = r.repeated_token_logit
    assert x.log_sum_exp - x.logit == pytest.approx(r.repeated_half_loss, rel=1e-4)
    assert sum(x.writers.values()) == pytest.approx(x.logit, rel=1e-3, abs=1e-4)
    assert x.rival_logit == pytest.approx(_rival_logit(model, 3, 4, 1), rel=1e-4)
    assert sum(x.rival_writers.values()) == pytest.approx(x.rival_logit, rel=1e-3, abs=1e-4)
    layers = {"embed", "attn0", "mlp0", "attn1", "mlp1"}
    assert set(x.loss_without) == layers | (
        {"pos"} if model.cfg.positional == "standard" else set()
    )
    want = {"embed", "mlp0", "mlp1"} | {f"L{l}H{h}" for l in range(2) for h in range(3)}
    want |= {"pos"} if model.cfg.positional == "standard" else set()
    want |= {"bias"} if model.cfg.bias else set()
    assert set(x.writers) == want


@pytest.mark.parametrize("total,n", [(1, 1), (10, 4), (1000, 16), (20000, 12), (50, 0)])
def test_snapshot_steps(total, n):
    steps = snapshot_steps(total, n)
    if n == 0:
        assert steps == []
        return
    assert steps == sorted(set(steps)) and steps[-1] == total and 1 <= len(steps) <= n
    assert steps[0] >= max(1, total // 100)


def test_logged_circuit_equals_the_snapshot_recomputed(tmp_path):
    """What the training probe logs at a step is what the snapshot of that step gives."""
    probed_run(tmp_path / "run")
    kept = list_snapshots(tmp_path / "run")
    assert kept == snapshot_steps(8, 3)
    records = {r["step"]: r for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").open())}
    for step in kept:
        again = training_probe(load_snapshot(tmp_path / "run", step).eval())
        logged = records[step]
        for key in ("probe_k_composition", "probe_qk_eigenvalue", "probe_ov_eigenvalue"):
            assert logged[key] == pytest.approx(again[key], abs=2e-5)
        assert logged["probe_induction_head"] == again["probe_induction_head"]
        assert logged["probe_partner_head"] == again["probe_partner_head"]


def test_missing_snapshot_is_one_clear_error(tmp_path):
    from qkov.errors import QkovError

    with pytest.raises(QkovError, match="--keep-checkpoints"):
        load_snapshot(tmp_path, 5)


def test_phase_change_is_not_placed_where_no_probe_saw_it():
    from qkov.metrics import phase_change

    def history(values):
        return {
            "series": {"probe_induction_score": [[1e6 * (i + 1), v] for i, v in enumerate(values)]}
        }

    assert phase_change(history([0.02, 0.05, 0.6, 0.8])) == {"tokens": [2e6, 3e6]}
    assert phase_change(history([0.67, 0.89, 0.90])) is None  # formed before the first probe
    assert phase_change(history([0.02, 0.1, 0.2])) is None  # no head


def test_repeated_token_logit_caches_no_d_model_wide_output_per_head(monkeypatch):
    """Each head's share is formed from its z one head at a time: a cache of every head's
    d_model-wide output is [batch, head, pos, d_model] per layer (5.8 GB at TinyLlama-1.1B's
    shape, where the test was killed). Nothing it caches is wider than the stream."""
    from qkov.model import Transformer

    model = general_model(d_model=24, n_heads=3)  # d_head 8
    cached: list[torch.Size] = []
    run = Transformer.run_with_cache

    def spy(self, *args, **kwargs):
        logits, cache = run(self, *args, **kwargs)
        cached.extend(v.shape for v in cache.values() if isinstance(v, torch.Tensor))
        return logits, cache

    monkeypatch.setattr(Transformer, "run_with_cache", spy)
    r = repetition_test(model, batch=3, half_len=4, seed=1)
    batch, pos, d_model = 3, 8, model.cfg.d_model
    assert cached and max(s.numel() for s in cached) <= batch * pos * d_model, cached
    x = r.repeated_token_logit
    assert sum(x.writers.values()) == pytest.approx(x.logit, rel=1e-3, abs=1e-4)


def _bos_tokenizer(d_vocab: int, bos: int):
    """A word-level tokenizer of d_vocab ids whose post-processor puts `bos` in front of
    every text, as Llama's does."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(d_vocab)} | {"<unk>": bos - 1, "<bos>": bos}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    assert add_start_token(tok, "<bos>") == bos
    return tok


def test_the_random_token_tests_start_as_a_text_starts():
    """A model whose tokenizer puts a beginning-of-text token in front of every text
    (Llama's) reads the repetition test and the head probe after that token, as it reads
    any text (TransformerLens prepends one too); the test's losses are still the halves'
    and its split still exact. A tokenizer without one (qkov's) changes nothing."""
    from qkov.data.probes import induction_probe, repeated_random_tokens
    from qkov.data.tokenizer import start_ids
    from qkov.heads import head_scores, induction_score
    from qkov.loss import token_losses
    from qkov.repetition import repetition_half_len

    model = general_model(normalization="rmsnorm", positional="rotary", bias=False, n_ctx=12)
    assert start_ids(None) == [] and repetition_half_len(model) == 6
    model.tokenizer = _bos_tokenizer(40, 39)
    assert start_ids(model.tokenizer) == [39] and repetition_half_len(model) == 5
    r = repetition_test(model, batch=3, half_len=4, seed=1)
    tokens = repeated_random_tokens(40, 3, 4, 1, prefix=[39])  # [3, 1 + 8]
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens)
    losses = token_losses(logits, tokens)  # column t-1 predicts token t
    assert r.first_half_loss == pytest.approx(float(losses[:, 1:4].mean()), rel=1e-5)
    assert r.repeated_half_loss == pytest.approx(float(losses[:, 5:8].mean()), rel=1e-5)
    want = torch.stack([induction_score(cache[f"pattern.{l}"], tokens, 4) for l in range(2)])
    torch.testing.assert_close(r.induction_scores, want)
    x = r.repeated_token_logit
    assert x.log_sum_exp - x.logit == pytest.approx(r.repeated_half_loss, rel=1e-4)
    assert sum(x.writers.values()) == pytest.approx(x.logit, rel=1e-3, abs=1e-4)
    with pytest.raises(QkovError, match="use half_len <= 5"):
        repetition_test(model, half_len=6)
    probe = induction_probe(40, 16, 12, 0, prefix=[39])
    scores = head_scores(model, copying=False)
    on_probe = head_scores(model, probe.tokens, half_len=probe.half_lens, copying=False)
    torch.testing.assert_close(scores.induction, on_probe.induction)
    torch.testing.assert_close(scores.previous_token, on_probe.previous_token)
    from qkov.data.evaluation import evaluation_set  # no text, no corpus: the probe

    assert (evaluation_set(model).tokens[:, 0] == 39).all()
