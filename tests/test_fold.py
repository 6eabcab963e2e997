"""fold_layernorm: the folded model computes the same function with no learned norm."""

from __future__ import annotations

import pytest
import torch

from factories import general_model, random_model, random_tokens
from qkov.config import ModelConfig
from qkov.fold import fold_bytes, fold_layernorm, is_folded
from qkov.model import Transformer, per_query_head

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


def llama_like(n_layers: int, d_model: int, d_head: int) -> Transformer:
    """Llama's shape: rotary, rmsnorm, gated SiLU MLP, 2 key/value heads for 4 query heads;
    every weight (the norms' too) moved off its initial value."""
    cfg = ModelConfig(
        n_layers=n_layers, n_heads=4, n_kv_heads=2, d_model=d_model, d_head=d_head, n_ctx=12,
        d_vocab=30, positional="rotary", rotary_dim=4, normalization="rmsnorm", d_mlp=24,
        act_fn="silu", gated_mlp=True,
    )  # fmt: skip
    torch.manual_seed(0)
    model = Transformer(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)  # norm weights off 1 too
    return model


def test_fold_of_a_grouped_query_gated_rmsnorm_model_gives_same_logits() -> None:
    model = llama_like(3, 16, 4).double()
    tokens = random_tokens(model)
    folded = fold_layernorm(model, center_unembed=False)
    assert folded.cfg.n_kv_heads == 4 and is_folded(folded)
    torch.testing.assert_close(folded(tokens), model(tokens), atol=1e-10, rtol=0)


def test_an_rmsnorm_fold_in_float32_has_the_float64_folds_bits() -> None:
    """An rmsnorm fold is one multiply per weight, diag(w) W, which IEEE rounds correctly in
    float32 too: folded in the model's dtype (3x faster at 1B) it equals, bit for bit, the
    product formed in float64 and rounded, also for the per-head copies of grouped K, V."""
    model = llama_like(2, 32, 8)
    w, f = model.weights(), fold_layernorm(model, center_unembed=False).weights()

    def product(W: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:  # rows scaled, float64
        return (W.double() * norm.double()[..., :, None]).float()

    assert torch.equal(f["W_U"], product(w["W_U"], w["ln_final_w"]))
    for l in range(model.cfg.n_layers):
        ln1 = w["ln1_w"][l][None]
        assert torch.equal(f["W_Q"][l], product(w["W_Q"][l], ln1))
        assert torch.equal(f["W_K"][l], product(per_query_head(w["W_K"][l], 4), ln1))
        assert torch.equal(f["W_V"][l], product(per_query_head(w["W_V"][l], 4), ln1))
        for name in ("W_in", "W_gate"):
            assert torch.equal(f[name][l], product(w[name][l], w["ln2_w"][l]))
    assert not torch.equal(f["W_Q"], w["W_Q"])  # the norm weights are not 1


def test_fold_works_one_layer_at_a_time(monkeypatch) -> None:
    """The fold computes in float64; a 1B model's weights whole in float64 are 9 GB (the
    fold of TinyLlama's shape needed 24 GB), so no float64 tensor it forms is larger than
    one layer's weights or the embedding."""
    model = general_model(6, d_mlp=64)
    per_layer = max(v[0].numel() for k, v in model.weights().items() if k not in ("W_E", "W_U"))
    largest = max(per_layer, model.W_E.numel(), model.W_U.numel())
    seen: list[int] = []
    to = torch.Tensor.to

    def spy(self: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        out = to(self, *args, **kwargs)
        if out.dtype == torch.float64 and self.dtype != torch.float64:
            seen.append(self.numel())
        return out

    monkeypatch.setattr(torch.Tensor, "to", spy)
    folded = fold_layernorm(model, center_unembed=False)
    monkeypatch.undo()
    assert seen and max(seen) <= largest, (max(seen), largest)
    tokens = random_tokens(model)
    torch.testing.assert_close(folded(tokens), model(tokens), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("normalization", ["layernorm", "rmsnorm"])
def test_model_wide_names_are_the_tensors_without_a_layer_axis(normalization):
    """The fold goes layer by layer over every tensor not in MODEL_WIDE: that list must be
    exactly the tensors `weight_shapes` gives no leading n_layers axis."""
    from qkov import ModelConfig
    from qkov.weights import MODEL_WIDE, weight_shapes

    cfg = ModelConfig(
        n_layers=3, n_heads=4, d_model=16, d_vocab=50, n_ctx=8, d_mlp=32, bias=True,
        normalization=normalization, positional="standard", gated_mlp=normalization == "rmsnorm",
    )  # fmt: skip
    shapes = weight_shapes(cfg)
    assert {n for n, s in shapes.items() if s[0] != 3} == set(MODEL_WIDE) & set(shapes)


def test_an_rmsnorm_fold_shares_the_tensors_it_leaves_as_they_are_when_asked() -> None:
    """W_E, W_O, W_out (a third of a Llama-style model) come out of an rmsnorm fold as they
    went in. With share=True (the analyses' fold, `qkov.circuits.folded`) the folded model
    holds the original's tensors, not copies (1.6 GB less at 1B), and still gives the same
    logits; a weight written in place is the same weight in both, and the next fold sees
    the write. By default the fold copies them (a model of its own, safe to cast or move),
    and a layernorm fold centres the writers: nothing to share."""
    from qkov.circuits import folded as analyses_fold

    def shared_with(original: Transformer, folded: Transformer) -> set[str]:
        mine = dict(original.named_parameters())
        return {n for n, p in folded.named_parameters() if n in mine and p is mine[n]}

    model = llama_like(2, 32, 8)
    folded = fold_layernorm(model, center_unembed=False, share=True)
    assert shared_with(model, folded) == {"W_E", "W_O", "W_out"}  # the rest read a norm
    assert analyses_fold(model) is folded  # the same fold, cached
    tokens = random_tokens(model)
    torch.testing.assert_close(folded(tokens), model(tokens), atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        model.W_O[1, 2] *= 3.0
    assert torch.equal(folded.W_O, model.W_O)
    refolded = fold_layernorm(model, center_unembed=False, share=True)
    assert refolded is not folded
    torch.testing.assert_close(refolded(tokens), model(tokens), atol=1e-5, rtol=1e-5)
    own = fold_layernorm(model, center_unembed=False)
    assert not shared_with(model, own) and torch.equal(own.W_O, model.W_O)
    own.double()  # a model of its own: the original stays float32
    assert model.W_O.dtype == torch.float32
    ln = general_model(2, normalization="layernorm")
    assert not shared_with(ln, fold_layernorm(ln, center_unembed=False, share=True))


@pytest.mark.parametrize(
    "kw",
    [
        dict(
            normalization="rmsnorm",
            d_mlp=32,
            gated_mlp=True,
            act_fn="silu",
            n_kv_heads=2,
            positional="rotary",
            bias=False,
        ),
        dict(normalization="rmsnorm", d_mlp=32, bias=True),
        dict(normalization="layernorm", d_mlp=32, bias=True),
        dict(normalization="layernorm", bias=False),
        dict(normalization="none", n_kv_heads=2, bias=True),
        dict(normalization="rms", n_kv_heads=1, d_mlp=16),
        dict(normalization="rms", d_mlp=16),
    ],
    ids=lambda kw: " ".join(f"{k}={v}" for k, v in kw.items()),
)
@pytest.mark.parametrize("share", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fold_bytes_is_what_the_fold_writes(kw, share, dtype) -> None:
    """`fold_bytes` (the memory check's estimate, from the config alone) is exactly the bytes
    of the tensors a fold allocates and does not share with the model."""
    kw = {"positional": "standard"} | kw
    cfg = ModelConfig(n_layers=2, n_heads=4, d_model=16, n_ctx=8, d_vocab=30, **kw)
    model = Transformer(cfg).to(dtype)
    folded = fold_layernorm(model, center_unembed=False, share=share)
    own = {p.data_ptr() for p in model.parameters()}
    written = sum(
        p.numel() * p.element_size() for p in folded.parameters() if p.data_ptr() not in own
    )
    assert fold_bytes(cfg, share, torch.empty(0, dtype=dtype).element_size()) == written
    assert written > 0 or is_folded(model)


@pytest.mark.parametrize("share", [True, False])
def test_a_fold_that_would_not_fit_is_refused_before_it_allocates(share, monkeypatch) -> None:
    """Python's own fold (the commands check it when they load) is refused with one line when
    the weights it writes exceed the memory available, and runs when they fit."""
    from qkov import QkovError

    model = general_model(normalization="layernorm")
    need = fold_bytes(model.cfg, share)
    monkeypatch.setattr("qkov.resources.available_memory", lambda device="cpu": need - 1)
    allocated = []
    monkeypatch.setattr(Transformer, "empty", lambda *a, **k: allocated.append(1) / 0)
    with pytest.raises(QkovError, match=r"^folding the norms of this [\d,]+-parameter model") as e:
        fold_layernorm(model, share=share)
    assert ("fold with share=True" in str(e.value)) == (not share) and allocated == []
    monkeypatch.undo()
    monkeypatch.setattr("qkov.resources.available_memory", lambda device="cpu": need)
    assert fold_layernorm(model, share=share).cfg.normalization == "rms"
