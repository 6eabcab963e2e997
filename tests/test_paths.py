"""The path expansion: its terms sum to the model's logits, and each term is the product
the paper writes, computed here by hand."""

import json
import math

import pytest
import torch

import factories
from qkov.errors import QkovError
from qkov.fold import fold_layernorm
from qkov.paths import count_paths, path_expansion, residual_paths

random_model = factories.circuit_model


def causal_softmax(scores: torch.Tensor) -> torch.Tensor:
    n = scores.shape[-1]
    mask = torch.ones(n, n, dtype=torch.bool).tril()
    return scores.masked_fill(~mask, float("-inf")).softmax(-1)


@pytest.mark.parametrize("norm", ["none", "rms"])
@pytest.mark.parametrize("positional", ["shortformer", "standard", "none"])
@pytest.mark.parametrize("n_layers", [0, 1, 2, 3])
def test_path_expansion_sums_to_logits(n_layers, positional, norm):
    for seed in range(2):
        model = random_model(n_layers, positional, seed=seed, norm=norm)
        tokens = torch.randint(0, 40, (2, 10), generator=torch.Generator().manual_seed(seed))
        pe = path_expansion(model, tokens)
        n_sources = 2 if positional == "standard" else 1
        assert len(pe.terms) == n_sources * (1 + model.cfg.n_heads) ** n_layers
        with torch.no_grad():
            logits = model(tokens)
        total = torch.stack([t.logits for t in pe.terms]).sum(0)
        assert (total - logits).abs().max() <= 1e-4
        assert logits.abs().max() > 1.0  # a non-trivial scale, so 1e-4 means something
        json.dumps(pe.to_dict())


def test_standard_positional_terms_are_needed_and_exact():
    model = random_model(2, "standard", seed=1)
    tokens = torch.randint(0, 40, (1, 10), generator=torch.Generator().manual_seed(0))
    pe = path_expansion(model, tokens)
    pos_terms = [t for t in pe.terms if t.start == "pos"]
    assert len(pos_terms) == 9 and pe.term("direct[pos]").order == 0
    # The positional direct term is W_pos W_U by hand.
    W = model.weights()
    torch.testing.assert_close(pe.term("direct[pos]").logits[0], W["W_pos"] @ W["W_U"])
    without = sum(t.logits for t in pe.terms if t.start == "token")
    assert (without - model(tokens)).abs().max() > 1e-2


def test_one_layer_head_term_matches_dense_formula():
    model = random_model(1, "shortformer", seed=2)
    tokens = torch.randint(0, 40, (10,), generator=torch.Generator().manual_seed(1))
    W = model.weights()
    x = W["W_E"][tokens] + W["W_pos"][:10]
    pe = path_expansion(model, tokens)
    for h in range(2):
        scores = (x @ W["W_Q"][0, h]) @ (x @ W["W_K"][0, h]).T / math.sqrt(8)
        A = causal_softmax(scores)  # [dest, src]
        term = A @ W["W_E"][tokens] @ W["W_V"][0, h] @ W["W_O"][0, h] @ W["W_U"]
        torch.testing.assert_close(pe.term(f"L0H{h}").logits[0], term, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(pe.term("direct").logits[0], W["W_E"][tokens] @ W["W_U"])


def test_two_layer_virtual_head_matches_dense_formula():
    model = random_model(2, "none", seed=3)
    tokens = torch.randint(0, 40, (1, 10), generator=torch.Generator().manual_seed(2))
    _, cache = model.run_with_cache(tokens)
    W = model.weights()
    A0, A1 = cache["pattern.0"][0, 1], cache["pattern.1"][0, 0]
    ov0 = W["W_V"][0, 1] @ W["W_O"][0, 1]
    ov1 = W["W_V"][1, 0] @ W["W_O"][1, 0]
    want = A1 @ A0 @ W["W_E"][tokens[0]] @ ov0 @ ov1 @ W["W_U"]
    pe = path_expansion(model, tokens)
    torch.testing.assert_close(pe.term("L0H1>L1H0").logits[0], want, atol=1e-5, rtol=1e-4)
    assert set(pe.by_order()) == {0, 1, 2}


# ---------------------------------------------------------------------- general models
GENERAL = [
    (norm, n_layers, act)
    for norm in ("layernorm", "rmsnorm")
    for n_layers in (1, 2, 3)
    for act in ("gelu_new",)
] + [("none", 2, "relu"), ("rms", 2, "silu")]


@pytest.mark.parametrize("norm,n_layers,act", GENERAL)
def test_path_expansion_sums_to_logits_with_mlp_norm_and_bias(norm, n_layers, act):
    """Sources token, pos, bias and each MLP's output, through every chain of heads, sum to
    the model's logits (patterns, norm scales and MLP outputs frozen), with and without a
    max_order cut (whose remainder term keeps the sum exact)."""
    model = factories.general_model(n_layers, normalization=norm, act_fn=act, seed=n_layers)
    if norm == "none":
        model = factories.general_model(n_layers, normalization=norm, act_fn=act, init_std=0.1)
    tokens = factories.random_tokens(model)
    logits = model(tokens)
    pe = path_expansion(model, tokens)
    starts = {t.start for t in pe.terms}
    assert starts == {"token", "pos", "bias"} | {f"mlp{l}" for l in range(n_layers)}
    # (1 + H)^(n_layers - l) chains from a source entering before layer l's heads.
    H = model.cfg.n_heads
    n_mlp_terms = sum((1 + H) ** (n_layers - 1 - l) for l in range(n_layers))
    assert len(pe.terms) == 3 * (1 + H) ** n_layers + n_mlp_terms
    torch.testing.assert_close(pe.total(), logits, atol=1e-4, rtol=0)
    for cut in range(n_layers):
        cut_pe = path_expansion(model, tokens, max_order=cut)
        assert max(t.order for t in cut_pe.terms) == cut + 1
        assert sum(t.cut is not None for t in cut_pe.terms) == 1
        torch.testing.assert_close(cut_pe.total(), logits, atol=1e-4, rtol=0)


def test_path_terms_of_a_general_model_match_hand_computation():
    """1 layer, layernorm, bias, MLP: the bias's one-head term is A (b/s W_V + b_V) W_O
    and the MLP's term is its output over the final scale through W_U, from folded weights
    computed by hand here."""
    model = factories.general_model(1, normalization="layernorm").double()
    tokens = factories.random_tokens(model)
    pe = path_expansion(model, tokens)
    f = fold_layernorm(model, center_unembed=False)
    _, cache = f.run_with_cache(tokens)
    s_final = cache["ln_final_scale"] if "ln_final_scale" in cache else cache["scale.final"]
    A = cache["pattern.0"]  # [batch, head, dest, src]
    bV = f.b_V[0, 1].detach()
    head_bias = (A[:, 1] @ bV.expand(tokens.shape[1], -1)) @ f.W_O[0, 1].detach()
    torch.testing.assert_close(
        pe.term("L0H1[bias]").logits, (head_bias / s_final) @ f.W_U.detach(), atol=1e-10, rtol=0
    )
    mlp = cache["mlp_out.0"] - f.b_out[0].detach()
    torch.testing.assert_close(
        pe.term("direct[mlp0]").logits, (mlp / s_final) @ f.W_U.detach(), atol=1e-10, rtol=0
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda n: random_model(n, "standard", seed=n),
        lambda n: random_model(n, "shortformer", seed=n),
        lambda n: factories.general_model(n, seed=n),  # MLPs, biases, LayerNorm, W_pos
        lambda n: factories.general_model(n, positional="rotary", bias=False, seed=n),
    ],
    ids=["attn-only", "shortformer", "mlp-bias-layernorm", "mlp-rotary"],
)
def test_count_paths_is_the_number_of_terms(make):
    """count_paths (what the budget and the memory guards weigh) is the number of terms the
    expansion makes, exactly, at the unembedding and entering every layer, for every cut:
    an MLP's output enters past its layer's heads, so it has fewer chains than the token."""
    for n_layers in (1, 2, 3):
        model = make(n_layers)
        tokens = factories.random_tokens(model, batch=1)[:, :6]
        for cut in (None, *range(n_layers + 1)):
            n = len(path_expansion(model, tokens, max_order=cut).terms)
            assert count_paths(model.cfg, cut) == n
            folded = fold_layernorm(model, center_unembed=False, share=True)
            _, cache = folded.run_with_cache(tokens)
            for layer in range(n_layers + 1):
                streams = residual_paths(folded, tokens, cache, layer, cut)
                assert count_paths(model.cfg, cut, layer) == len(streams)


def test_an_expansion_too_large_for_memory_is_refused_with_the_cut_that_fits(monkeypatch):
    """Checked before any work: a 3-layer model whose every chain does not fit (memory
    made small here) is refused with one line naming the largest max_order that fits."""
    model = random_model(3, "shortformer", seed=1)
    tokens = torch.randint(0, 40, (1, 10), generator=torch.Generator().manual_seed(0))
    per_path = 10 * (model.cfg.d_model + model.cfg.d_vocab) * 4  # fp32 bytes a term keeps
    room = count_paths(model.cfg, 1) * per_path  # order 1 fits, order 2 does not
    monkeypatch.setattr("qkov.resources.available_memory", lambda device="cpu": 2 * room)
    with pytest.raises(QkovError, match=r"paths over 10 tokens needs .* cut it at max_order=1 "):
        path_expansion(model, tokens)
    pe = path_expansion(model, tokens, max_order=1)
    torch.testing.assert_close(pe.total(), model(tokens), atol=1e-4, rtol=0)
