"""fold_layernorm: the folded model computes the same function with no learned norm."""

from __future__ import annotations

import pytest
import torch

from factories import general_model, random_model, random_tokens
from qkov.fold import fold_layernorm, is_folded

CASES = [
    (norm, n_layers, bias, act)
    for norm in ("layernorm", "rmsnorm")
    for n_layers in (1, 2, 3)
    for bias, act in ((True, "gelu_new"), (False, "relu"))
]


@pytest.mark.parametrize("norm,n_layers,bias,act", CASES)
def test_fold_gives_same_logits(norm: str, n_layers: int, bias: bool, act: str) -> None:
    model = general_model(n_layers, normalization=norm, bias=bias, act_fn=act, seed=n_layers)
    tokens = random_tokens(model)
    folded = fold_layernorm(model, center_unembed=False)
    assert folded.cfg.normalization == "rms" and is_folded(folded)
    assert not any(n.startswith("ln") for n in folded.weights())
    torch.testing.assert_close(folded(tokens), model(tokens), atol=1e-5, rtol=1e-5)
    # In float64 the fold is exact to rounding: a wrong term would show far above 1e-10.
    m64 = model.double()
    torch.testing.assert_close(
        fold_layernorm(m64, center_unembed=False)(tokens), m64(tokens), atol=1e-10, rtol=0
    )


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_center_unembed_shifts_logits_by_a_constant(norm: str) -> None:
    model = general_model(2, normalization=norm).double()
    tokens = random_tokens(model)
    folded = fold_layernorm(model)
    assert folded.W_U.mean(-1).abs().max() < 1e-12
    diff = folded(tokens) - model(tokens)  # one constant per position
    torch.testing.assert_close(diff, diff[..., :1].expand_as(diff), atol=1e-10, rtol=0)
    torch.testing.assert_close(
        folded(tokens).log_softmax(-1), model(tokens).log_softmax(-1), atol=1e-10, rtol=0
    )


def test_layernorm_fold_centres_the_stream() -> None:
    """Every write is centred, so the stream has zero mean and rms equals layernorm's divisor."""
    model = general_model(2, normalization="layernorm")
    folded = fold_layernorm(model, center_unembed=False)
    _, cache = folded.run_with_cache(random_tokens(model), names=lambda n: "resid" in n)
    for name, resid in cache.items():
        assert resid.mean(-1).abs().max() < 1e-5, name


def test_fold_of_a_model_without_norm_weights_is_itself() -> None:
    model = random_model(2, normalization="rms")
    assert fold_layernorm(model, center_unembed=False) is model
