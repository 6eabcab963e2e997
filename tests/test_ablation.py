"""Term importance and head ablation checked against the math (qkov.ablation)."""

from __future__ import annotations

import pytest
import torch

import factories
from factories import random_tokens
from qkov import QkovError
from qkov.ablation import (
    ablate_orders,
    head_ablation_logits,
    mlp_ablation_logits,
    order_logits,
    order_residuals,
    start_order_residuals,
    term_importance,
)
from qkov.data.probes import repeated_random_tokens
from qkov.paths import path_expansion
from test_heads import V, build_induction_model

TOL = dict(atol=1e-4, rtol=1e-4)


def random_model(n_layers: int, positional: str = "shortformer", n_heads: int = 3, norm="none"):
    """This file's models: seeded by depth."""
    return factories.random_model(
        n_layers, positional, normalization=norm, n_heads=n_heads, seed=n_layers
    )


# ---------------------------------------------------------------------------- path orders
@pytest.mark.parametrize("norm", ["none", "rms"])
@pytest.mark.parametrize("positional", ["shortformer", "standard", "none"])
@pytest.mark.parametrize("n_layers", [1, 2, 3])
def test_orders_sum_to_logits(n_layers, positional, norm):
    model = random_model(n_layers, positional, norm=norm)
    tokens = random_tokens(model)
    terms = order_logits(model, tokens)
    assert terms.shape == (n_layers + 1, 3, 12, 40)
    torch.testing.assert_close(terms.sum(0), model(tokens), **TOL)
    # Ablating every order leaves nothing.
    ablated = ablate_orders(model, tokens, list(range(n_layers + 1)))
    torch.testing.assert_close(ablated, torch.zeros_like(ablated), **TOL)


@pytest.mark.parametrize("norm", ["none", "rms"])
@pytest.mark.parametrize("positional", ["shortformer", "standard"])
def test_orders_agree_with_the_path_expansion(positional, norm):
    model = random_model(2, positional, norm=norm)
    tokens = random_tokens(model, seed=1)
    mine = order_logits(model, tokens)
    by_order = path_expansion(model, tokens).by_order()
    for k in range(3):
        torch.testing.assert_close(mine[k], by_order[k], **TOL)


def test_zero_layer_model_has_only_the_direct_term():
    model = random_model(0)
    tokens = random_tokens(model)
    terms = order_logits(model, tokens)
    assert terms.shape[0] == 1
    w = model.weights()
    torch.testing.assert_close(terms[0], w["W_E"][tokens] @ w["W_U"], **TOL)
    ti = term_importance(model, tokens)
    assert [o.order for o in ti.orders] == [0] and ti.heads == ()
    assert ti.orders[0].n_terms == 1


def test_one_layer_order_terms_are_direct_path_and_heads():
    model = random_model(1)
    tokens = random_tokens(model)
    w = model.weights()
    direct = w["W_E"][tokens] @ w["W_U"]
    torch.testing.assert_close(ablate_orders(model, tokens, [1]), direct, **TOL)
    torch.testing.assert_close(ablate_orders(model, tokens, [0]), model(tokens) - direct, **TOL)


def test_order2_ablation_equals_hooked_forward_without_layer0_in_values():
    """Removing the virtual heads = the forward pass whose layer-1 values read only W_E."""
    model = random_model(2)
    tokens = random_tokens(model, seed=2)
    _, cache = model.run_with_cache(tokens, names=["embed"])
    w = model.weights()

    def values_from_embed(v, name):
        return cache["embed"][:, None] @ w["W_V"][1]  # [batch, head, pos, d_head]

    hooked, _ = model.run_with_hooks(tokens, hooks={"v.1": values_from_embed})
    torch.testing.assert_close(ablate_orders(model, tokens, [2]), hooked, **TOL)


def test_mean_ablation_keeps_the_mean_of_the_term():
    model = random_model(2)
    tokens = random_tokens(model)
    R, logits = order_residuals(model, tokens)
    W_U = model.weights()["W_U"]
    for k in range(3):
        expected = logits - (R[k] - R[k].mean(dim=(0, 1))) @ W_U
        torch.testing.assert_close(ablate_orders(model, tokens, [k], "mean"), expected, **TOL)


def test_term_importance_records_and_handbuilt_story():
    model = build_induction_model()
    h = 15
    tokens = repeated_random_tokens(V, batch=8, half_len=h, seed=0)
    ti = term_importance(model, tokens)
    # The clean loss against a reference written out here: -log softmax at the next token.
    with torch.no_grad():
        logp = model(tokens)[:, :-1].log_softmax(-1)
    reference = -logp.gather(-1, tokens[:, 1:, None]).mean()
    assert ti.clean_loss == pytest.approx(float(reference), abs=1e-5)
    assert [o.n_terms for o in ti.orders] == [1, 4, 4]
    d = {o.order: o.delta for o in ti.orders}
    # The induction head moves tokens with its (order-1) value path; it reads L0H0 through
    # its key only, which frozen patterns keep, so the virtual heads (V-composition) are ~0.
    assert d[1] > 0.05 and abs(d[2]) < 1e-3 and abs(d[0]) < 1e-6  # W_E W_U = 0 here
    heads = {x.name: x for x in ti.heads}
    # Knocking out the previous-token head breaks the induction head's keys.
    assert heads["L0H0"].zero_delta > 1.0 and heads["L1H0"].zero_delta > 0.05
    assert abs(heads["L0H1"].zero_delta) < 0.01 and abs(heads["L1H1"].mean_delta) < 0.01
    assert "virtual heads" in ti.table() and ti.to_dict()["heads"][0]["layer"] == 0


def test_head_ablation_single_head_model_equals_direct_path():
    model = random_model(1, n_heads=1)
    tokens = random_tokens(model)
    torch.testing.assert_close(
        head_ablation_logits(model, tokens, 0, 0, "zero"), ablate_orders(model, tokens, [1]), **TOL
    )
    # Mean ablation: the head's output replaced by its mean over batch and positions.
    _, cache = model.run_with_cache(tokens, names=["head_out.0"])
    w = model.weights()
    mean_out = cache["head_out.0"][:, 0].mean(dim=(0, 1))
    expected = (w["W_E"][tokens] + mean_out) @ w["W_U"]
    torch.testing.assert_close(head_ablation_logits(model, tokens, 0, 0, "mean"), expected, **TOL)


def test_ablation_errors():
    model = random_model(1)
    tokens = random_tokens(model)
    with pytest.raises(QkovError, match="mode"):
        term_importance(model, tokens, mode="resample")
    with pytest.raises(QkovError, match="orders"):
        ablate_orders(model, tokens, [2])
    with pytest.raises(QkovError, match="L1H0"):
        head_ablation_logits(model, tokens, 1, 0)
    with pytest.raises(QkovError, match="at least 2"):
        term_importance(model, tokens[:, :1])


# ---------------------------------------------------------------------------- general models
@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
@pytest.mark.parametrize("n_layers", [1, 2, 3])
def test_general_orders_sum_to_logits_and_match_path_expansion(norm, n_layers):
    model = factories.general_model(n_layers, normalization=norm, seed=n_layers)
    tokens = factories.random_tokens(model)
    terms = order_logits(model, tokens)
    torch.testing.assert_close(terms.sum(0), model(tokens), atol=1e-4, rtol=0)
    by_order = path_expansion(model, tokens).by_order()
    for k in range(n_layers + 1):
        torch.testing.assert_close(terms[k], by_order[k], atol=1e-4, rtol=0)
    S, logits, f = start_order_residuals(model, tokens)
    by_start = path_expansion(model, tokens).by_start()
    for name, R in S.items():
        extra = f.b_U.detach() if name == "bias" else 0.0
        torch.testing.assert_close(
            R.sum(0) @ f.W_U.detach() + extra, by_start[name], atol=1e-4, rtol=0
        )


def test_mlp_paths_removed_equal_the_knock_out_of_the_last_mlp():
    """Without a norm, nothing reads the last MLP's output but W_U: removing its paths
    (frozen) and knocking it out (live) are the same ablation (without b_out, which the
    knock-out removes and the paths leave to the "bias" start)."""
    model = factories.general_model(1, normalization="none", bias=False, init_std=0.1)
    tokens = factories.random_tokens(model)
    ti = term_importance(model, tokens, per_head=False)
    (m,) = ti.mlps
    assert m.name == "MLP0"
    assert abs(m.paths_loss - m.zero_loss) < 1e-5
    ti_mean = term_importance(model, tokens, mode="mean", per_head=False)
    assert abs(ti_mean.mlps[0].paths_loss - ti_mean.mlps[0].mean_loss) < 1e-5
    assert "MLP0" in ti.table()
    hooked = mlp_ablation_logits(model, tokens, 0, "zero")
    _, cache = model.run_with_cache(tokens, names=["mlp_out.0"])
    torch.testing.assert_close(hooked, model(tokens) - cache["mlp_out.0"] @ model.W_U.detach())


def test_term_importance_table_names_what_order_0_removes():
    """Order 0 removes every start through no head: with biases and MLPs, more than the
    direct path. `qkov heads --terms` (TermImportance.table) names them as the report does
    (analyze's term "order 0: direct path, biases, MLPs"), not "direct path" alone."""
    from qkov.analyze import _order_name

    model = factories.general_model(2)
    tokens = random_tokens(model, 2)
    ti = term_importance(model, tokens, per_head=False)
    S, _, _ = start_order_residuals(model, tokens)
    assert any(k.startswith("mlp") for k in S) and any("bias" in k for k in S)  # in order 0
    line = next(x for x in ti.table().splitlines() if x.startswith("0 "))
    want = _order_name(0, 1, model.cfg).removeprefix("order 0: ")
    assert want == "direct path, biases, MLPs" and line.startswith(f"0 {want} ")
    attn_only = factories.general_model(2, d_mlp=0, bias=False, normalization="none")
    ti = term_importance(attn_only, tokens, per_head=False)
    assert next(x for x in ti.table().splitlines() if x.startswith("0 ")).startswith(
        "0 direct path "
    )
