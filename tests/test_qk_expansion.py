"""QK expansion: terms sum to the model's scores; a planted induction head's dominant term is
K-composition through its previous-token head."""

import json
import math

import pytest
import torch

import factories
from qkov import qk_expansion
from qkov.errors import QkovError
from qkov.qk_terms import qk_expansion_all, row_centred

NORMS = ["none", "rms", "layernorm", "rmsnorm"]


def _clean_scores(model, tokens, layer):
    """The hook scores.{layer} [batch, head, dest, src] (masked with -inf above the diagonal)."""
    _, cache = model.run_with_cache(tokens, names=[f"scores.{layer}"])
    return cache[f"scores.{layer}"]


def _check_sums(model, tokens, max_order=None):
    mask = torch.ones(tokens.shape[1], tokens.shape[1], dtype=torch.bool).tril()
    for l in range(model.cfg.n_layers):
        hook = _clean_scores(model, tokens, l)
        assert hook[..., mask].abs().max() > 0.5  # a non-trivial scale, so 1e-4 means something
        for h in range(model.cfg.n_heads):
            qe = qk_expansion(model, tokens, l, h, max_order=max_order)
            total = qe.total()
            assert total.shape == hook[:, h].shape
            assert (total - hook[:, h])[..., mask].abs().max() <= 1e-4
            assert qe.max_abs_error() <= 1e-4


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("positional", ["shortformer", "standard", "none"])
@pytest.mark.parametrize("n_layers", [1, 2, 3])
def test_terms_sum_to_scores(n_layers, positional, norm):
    if positional == "shortformer" and norm in ("layernorm", "rmsnorm"):
        positional = "standard"  # the config refuses this pair; test the other mode twice
    model = factories.random_model(
        n_layers, positional, normalization=norm, n_heads=2, d_model=16, n_ctx=8, seed=n_layers
    )
    factories.randomise_biases_and_norms(model, seed=1)  # norm weights (no biases here)
    tokens = factories.random_tokens(model, batch=2)
    _check_sums(model, tokens)
    # The side count: starts x (1 + H)^layer chains (shortformer's pos is a side of its own;
    # a folded layernorm adds a bias side).
    H, last = 2, n_layers - 1
    qe = qk_expansion(model, tokens, last, 0)
    n_sides = (1 + (positional == "standard")) * (1 + H) ** last + (positional == "shortformer")
    n_sides += (1 + H) ** last if norm == "layernorm" else 0
    assert len(qe.terms) == n_sides**2
    json.dumps(qe.to_dict())


@pytest.mark.parametrize("norm", ["none", "rms", "layernorm"])
@pytest.mark.parametrize("n_layers", [1, 2, 3])
def test_terms_sum_to_scores_with_mlp_and_bias(n_layers, norm):
    """MLP outputs start sides too (mlp{l} feeds only later layers), b_Q/b_K join the bias
    side; a max_order cut keeps the sum exact through its remainder side."""
    std = 0.3 if norm == "none" else 0.4  # without a norm the stream grows with depth
    model = factories.general_model(
        n_layers, normalization=norm, n_heads=2, d_model=16, n_ctx=8, init_std=std, seed=n_layers
    )
    tokens = factories.random_tokens(model, batch=2)
    _check_sums(model, tokens)
    last = n_layers - 1
    qe = qk_expansion(model, tokens, last, 1)
    sides = {t.query for t in qe.terms}
    assert {"token", "pos", "bias"} | {f"mlp{l}" for l in range(last)} <= sides
    for cut in range(last):
        cut_qe = qk_expansion(model, tokens, last, 1, max_order=cut)
        assert "remainder" in {t.query for t in cut_qe.terms}
        assert cut_qe.max_abs_error() <= 1e-4


def test_layer0_terms_are_the_weight_products():
    """Layer 0, shortformer, no norm: token . pos is W_E[tok] W_Q (W_pos W_K)^T / sqrt(d_head)."""
    model = factories.random_model(1, "shortformer", n_heads=2, d_model=16, n_ctx=8)
    tokens = factories.random_tokens(model, batch=1)
    qe = qk_expansion(model, tokens, 0, 1)
    assert {t.name for t in qe.terms} == {
        "token · token",
        "token · pos",
        "pos · token",
        "pos · pos",
    }
    assert {t.kind for t in qe.terms} == {"direct"}
    W = model.weights()
    q = W["W_E"][tokens[0]] @ W["W_Q"][0, 1]
    k = W["W_pos"][:8] @ W["W_K"][0, 1]
    expected = q @ k.T / math.sqrt(model.cfg.d_head)
    torch.testing.assert_close(qe.term("token · pos").scores[0], expected)


def test_row_centred_size_ignores_row_constants():
    s = torch.randn(2, 5, 5)
    shifted = s + torch.randn(2, 5, 1) * 10  # softmax ignores a constant per destination
    torch.testing.assert_close(row_centred(s), row_centred(shifted))


def test_planted_induction_head_is_k_composition_through_previous_token_head():
    model = factories.induction_model()
    g = torch.Generator().manual_seed(1)
    first = torch.stack([torch.randperm(12, generator=g)[:6] for _ in range(4)])
    tokens = torch.cat([first, first], dim=1)  # [a b c ...][a b c ...]
    qe = qk_expansion(model, tokens, 1, 0)
    assert qe.max_abs_error() <= 1e-4
    (top, size), (second, size2) = qe.ranked()[:2]
    assert top.name == "token · L0H0" and top.kind == "K-composition"
    assert size > 2 * size2
    assert next(iter(qe.by_kind())) == "K-composition"
    # The term matches tokens: at a repeated token it peaks on the source after the first copy.
    # (Position 0 has no previous token: L0H0 reads position 0 itself there, so the first
    # destination of the copy is left out.)
    sc = top.scores[:, 7:, :]  # destinations in the second copy
    assert (sc.argmax(-1) == torch.arange(5) + 2).all()
    # A head with no planted circuit has no such dominance to show; the summary still serialises.
    summary = qe.summary(3)
    assert summary["terms"][0]["name"] == "token · L0H0" and len(summary["terms"]) == 3
    assert [k["kind"] for k in summary["kinds"]][0] == "K-composition"


def test_qk_expansion_all_and_bad_head():
    model = factories.random_model(2, "shortformer", n_heads=2, d_model=16, n_ctx=8)
    tokens = factories.random_tokens(model, batch=1)
    assert len(qk_expansion_all(model, tokens)) == 4
    with pytest.raises(QkovError, match="layer 2 does not exist"):
        qk_expansion(model, tokens, 2, 0)
    with pytest.raises(QkovError, match="max_order"):
        qk_expansion(model, tokens, 1, 0, max_order=-1)


def test_qk_expansions_one_head_at_a_time_as_each_alone():
    """qk_expansions (what analyze reads) gives each head's expansion as qk_expansion does,
    in the order asked, and keeps none it has handed over: analyze holds one head's terms
    at a time (all of a d_model 2048 model's at once were ~10 GB)."""
    import gc
    import weakref

    from qkov.qk_terms import qk_expansions

    model = factories.general_model(3)
    tokens = factories.random_tokens(model, batch=2)
    chosen = [(2, 1), (0, 2), (2, 0), (1, 1)]
    for (l, h), qe in zip(chosen, qk_expansions(model, tokens, chosen, max_order=1), strict=True):
        alone = qk_expansion(model, tokens, l, h, max_order=1)
        assert (qe.layer, qe.head) == (l, h) and [t.name for t in qe.terms] == [
            t.name for t in alone.terms
        ]
        torch.testing.assert_close(qe.total(), alone.total(), atol=1e-6, rtol=0)
        torch.testing.assert_close(qe.total(), qe.scores, atol=1e-4, rtol=0)
    it = qk_expansions(model, tokens, max_order=1)
    first = weakref.ref(next(it))
    second = next(it)
    gc.collect()
    assert first() is None and second.terms
    with pytest.raises(QkovError, match="layer 3 does not exist"):
        next(qk_expansions(model, tokens, [(0, 0), (3, 0)]))


def test_an_expansion_too_large_for_memory_is_refused_with_the_cut_that_fits(monkeypatch):
    """Checked before any work (GPT-2's last layer has ~10^4 sides at order 2, 10^8 side
    pairs): with memory made small here, every chain of a 3-layer model's last layer does
    not fit, order 1 does; the refusal names it, and that cut stays exact."""
    from qkov.paths import count_paths

    model = factories.general_model(3)
    tokens = factories.random_tokens(model, batch=1)
    cfg, n = model.cfg, tokens.shape[1]

    def need(order):
        sides = count_paths(cfg, order, 2)  # standard positions: no W_pos side of its own
        return 4 * (sides * n * cfg.d_model + sides**2 * n * n)

    monkeypatch.setattr("qkov.resources.available_memory", lambda device="cpu": 2 * need(1))
    with pytest.raises(QkovError, match=r"QK expansion of L2H0 needs .* cut it at max_order=1 "):
        qk_expansion(model, tokens, 2, 0)
    _check_sums(model, tokens, max_order=1)


def test_cli_qk_terms_of_chosen_heads(tmp_path, capsys):
    """`qkov heads --qk-terms --qk-heads L1H0 --qk-max-order 1`: that head alone, cut where
    asked, the numbers qk_expansion gives; a head the model has not is one line, exit 2."""
    import qkov
    from qkov.cli import main

    model = factories.general_model(2)
    qkov.save_model(model, tmp_path / "m")
    out = tmp_path / "h.json"
    argv = ["heads", str(tmp_path / "m"), "--qk-terms", "--qk-heads", "L1H0"]
    assert main(argv + ["--qk-max-order", "1", "--qk-seqs", "2", "--json", str(out)]) == 0
    qk_part = capsys.readouterr().out.split("\nQK terms on ")[1]
    assert "chains of more than 1 heads summed" in qk_part
    assert qk_part.count(" kinds: ") == 1 and "\nL1H0   kinds: " in qk_part
    (got,) = json.loads(out.read_text())["qk_terms"]
    assert (got["layer"], got["head"]) == (1, 0)
    assert main(argv[:-1] + ["L2H0"]) == 2
    assert "--qk-heads: 'L2H0' is not a head of this model" in capsys.readouterr().err
    assert main(argv + ["--qk-max-order", "-1"]) == 2
