"""qkov.interop.transformer_lens against the TransformerLens package (3.9.0).

Tests that need TL skip with a reason when it is not installed; the round trips through
qkov's own converter run without it."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch

from qkov import AttnOnlyTransformer, ModelConfig, QkovError
from qkov.interop import (
    convert_state_dict,
    from_pretrained,
    from_transformer_lens,
    load_transformer_lens,
    save_transformer_lens,
    to_hooked_transformer,
    to_transformer_lens,
)

ATOL = 1e-5
SKIP = "TransformerLens not installed: pip install 'qkov[interop]' (transformer-lens==3.9.0)"


@pytest.fixture(scope="module")
def tl():
    mod = pytest.importorskip("transformer_lens", reason=SKIP)
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="transformer_lens")
    return mod


def tl_model(tl, n_layers: int, positional: str, norm: str | None = None, biases: bool = True):
    """A HookedTransformer with random weights, random biases (and random LN weights)."""
    cfg = tl.HookedTransformerConfig(
        n_layers=n_layers,
        d_model=32,
        n_ctx=16,
        d_head=8,
        n_heads=4,
        d_vocab=50,
        attn_only=True,
        positional_embedding_type=positional,
        normalization_type=norm,
        device="cpu",
        seed=n_layers,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = tl.HookedTransformer(cfg).eval()
    g = torch.Generator().manual_seed(n_layers)
    with torch.no_grad():
        for name, p in model.named_parameters():
            last = name.rsplit(".", 1)[-1]
            if last.startswith("b_"):
                p.copy_(0.3 * torch.randn(p.shape, generator=g) if biases else 0 * p)
            elif last == "b":
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            elif last == "w":
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
            else:  # sharper patterns than TL's init; writes kept small so logits stay O(1)
                std = 0.3 if last in ("W_E", "W_pos", "W_Q", "W_K") else 0.12
                p.copy_(std * torch.randn(p.shape, generator=g))
    return model


def tokens(n: int = 16, batch: int = 3) -> torch.Tensor:
    return torch.randint(0, 50, (batch, n), generator=torch.Generator().manual_seed(7))


# ---------------------------------------------------------------------------- TL -> qkov
@pytest.mark.parametrize("positional", ["shortformer", "standard"])
@pytest.mark.parametrize("n_layers", [1, 2, 3])
def test_same_logits_and_patterns_as_tl(tl, positional, n_layers):
    hooked = tl_model(tl, n_layers, positional)
    model = from_transformer_lens(hooked)
    assert model.cfg.d_model == 33  # nonzero biases live in the bias direction
    x = tokens()
    want, tl_cache = hooked.run_with_cache(x)
    torch.testing.assert_close(model(x), want, atol=ATOL, rtol=0)
    logits, cache = model.run_with_cache(x)
    torch.testing.assert_close(logits, want, atol=ATOL, rtol=0)
    for l in range(n_layers):
        torch.testing.assert_close(
            cache[f"pattern.{l}"], tl_cache[f"blocks.{l}.attn.hook_pattern"], atol=ATOL, rtol=0
        )


def test_bias_free_checkpoint_keeps_its_width(tl):
    hooked = tl_model(tl, 2, "shortformer", biases=False)
    converted = convert_state_dict(hooked.state_dict(), hooked.cfg)
    assert converted.config.d_model == 32 and converted.bias_direction is None
    assert converted.exact
    torch.testing.assert_close(converted.model()(tokens()), hooked(tokens()), atol=ATOL, rtol=0)


def test_drop_biases_keeps_width_and_says_it_is_approximate(tl):
    hooked = tl_model(tl, 1, "standard")
    converted = convert_state_dict(hooked.state_dict(), hooked.cfg, drop_biases=True)
    assert converted.config.d_model == 32 and not converted.exact
    assert torch.equal(converted.weights["W_Q"], hooked.W_Q.detach())


def test_attention_scale_is_folded(tl):
    hooked = tl_model(tl, 1, "standard", biases=False)
    sd = hooked.state_dict()
    cfg = {**hooked.cfg.to_dict(), "use_attn_scale": False}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        unscaled = tl.HookedTransformer(tl.HookedTransformerConfig(**cfg)).eval()
    unscaled.load_state_dict(sd)
    model = from_transformer_lens(sd, cfg)
    torch.testing.assert_close(model(tokens()), unscaled(tokens()), atol=ATOL, rtol=0)


def test_layernorm_folds_exactly_up_to_the_scale(tl):
    hooked = tl_model(tl, 2, "standard", norm="LN")
    with pytest.raises(QkovError, match="fold_ln=True"):
        from_transformer_lens(hooked)
    converted = convert_state_dict(hooked.state_dict(), hooked.cfg, fold_ln=True)
    assert not converted.exact
    # TL with every LN scale set to 1 is what qkov's (norm-free) model computes.
    ones = [(f"blocks.{l}.ln1.hook_scale", lambda s, hook: torch.ones_like(s)) for l in range(2)]
    ones.append(("ln_final.hook_scale", lambda s, hook: torch.ones_like(s)))
    want = hooked.run_with_hooks(tokens(), fwd_hooks=ones)
    torch.testing.assert_close(converted.model()(tokens()), want, atol=1e-4, rtol=1e-5)


def test_refuses_what_qkov_cannot_represent(tl):
    hooked = tl_model(tl, 1, "shortformer")
    sd, cfg = hooked.state_dict(), hooked.cfg.to_dict()
    with pytest.raises(QkovError, match="MLP"):
        convert_state_dict(sd, {**cfg, "attn_only": False})
    with pytest.raises(QkovError, match="shortformer \\+ LayerNorm"):
        convert_state_dict(sd, {**cfg, "normalization_type": "LN"}, fold_ln=True)
    with pytest.raises(QkovError, match="rotary"):
        convert_state_dict(sd, {**cfg, "positional_embedding_type": "rotary"})
    with pytest.raises(QkovError, match="missing blocks.0.attn.W_K"):
        convert_state_dict({k: v for k, v in sd.items() if k != "blocks.0.attn.W_K"}, cfg)
    with pytest.raises(QkovError, match="shape"):
        convert_state_dict({**sd, "unembed.W_U": sd["unembed.W_U"][:, :10]}, cfg)
    with pytest.raises(QkovError, match="MLP weights"):
        convert_state_dict({**sd, "blocks.0.mlp.W_in": torch.zeros(32, 128)}, cfg)


# ---------------------------------------------------------------------------- qkov -> TL
@pytest.mark.parametrize("normalization", ["none", "rms"])
@pytest.mark.parametrize("positional", ["shortformer", "standard", "none"])
def test_export_runs_in_tl_with_same_logits(tl, positional, normalization):
    model = AttnOnlyTransformer(
        ModelConfig(
            n_layers=2,
            n_heads=4,
            d_model=32,
            n_ctx=16,
            d_vocab=50,
            positional=positional,
            init_std=0.3,
            normalization=normalization,
        )
    )
    hooked = to_hooked_transformer(model)
    want = "RMSPre" if normalization == "rms" else None
    assert hooked.cfg.normalization_type == want
    torch.testing.assert_close(hooked(tokens()), model(tokens()), atol=ATOL, rtol=0)


@pytest.mark.parametrize("positional", ["shortformer", "standard"])
def test_tl_rmspre_model_imports_exactly(tl, positional):
    """TL's weightless RMS norm is qkov's normalization="rms": bias-free models import
    exactly (logits and patterns); biases are refused, since folding them would change
    each position's RMS."""
    hooked = tl_model(tl, 2, positional, norm="RMSPre", biases=False)
    converted = convert_state_dict(hooked.state_dict(), hooked.cfg)
    assert converted.exact and converted.config.normalization == "rms"
    model = converted.model()
    want, tl_cache = hooked.run_with_cache(tokens())
    logits, cache = model.run_with_cache(tokens())
    torch.testing.assert_close(logits, want, atol=ATOL, rtol=0)
    torch.testing.assert_close(
        cache["pattern.1"], tl_cache["blocks.1.attn.hook_pattern"], atol=ATOL, rtol=0
    )
    biased = tl_model(tl, 2, positional, norm="RMSPre")
    with pytest.raises(QkovError, match="RMSPre normalisation and nonzero biases"):
        convert_state_dict(biased.state_dict(), biased.cfg)


def test_composition_scores_match_tl(tl):
    from qkov.composition import composition_scores

    hooked = tl_model(tl, 3, "shortformer", biases=False)
    scores = composition_scores(from_transformer_lens(hooked), n_baseline=2)
    for kind in ("q", "k", "v"):
        want = hooked.all_composition_scores(kind.upper())
        ours = scores.get(kind)
        earlier = ~torch.isnan(ours)
        assert earlier.sum() == 3 * 16  # pairs (0,1), (0,2), (1,2) of 4 x 4 heads
        torch.testing.assert_close(ours[earlier], want[earlier], atol=ATOL, rtol=0)
        assert (want[~earlier] == 0).all()


def test_factored_eigenvalues_match_tl(tl):
    from qkov.factored import FactoredMatrix

    g = torch.Generator().manual_seed(3)
    A, B = torch.randn(2, 4, 32, 8, generator=g), torch.randn(2, 4, 8, 32, generator=g)
    ours = FactoredMatrix(A, B).eigenvalues  # [2, 4, 8] complex
    theirs = tl.FactoredMatrix(A, B).eigenvalues
    # Same multiset per matrix: match each eigenvalue to its nearest in the other set.
    dist = (ours[..., :, None] - theirs[..., None, :]).abs()
    assert dist.min(-1).values.max() < 1e-4 and dist.min(-2).values.max() < 1e-4


def test_from_pretrained_needs_an_explicit_flag():
    with pytest.raises(QkovError, match="allow_download=True"):
        from_pretrained("attn-only-2l")


# ---------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("positional", ["shortformer", "standard"])
def test_round_trip_through_tl_state_dict_is_bit_exact(positional):
    model = AttnOnlyTransformer(
        ModelConfig(n_layers=2, n_heads=2, d_model=16, n_ctx=8, d_vocab=30, positional=positional)
    )
    sd, cfg = to_transformer_lens(model)
    back = convert_state_dict(sd, cfg)
    assert back.config == model.cfg and back.bias_direction is None
    for name, value in model.weights().items():
        assert torch.equal(back.weights[name], value), name


def test_round_trip_through_files(tmp_path):
    model = AttnOnlyTransformer(
        ModelConfig(n_layers=1, n_heads=2, d_model=16, n_ctx=8, d_vocab=30, seed=3)
    )
    folder = save_transformer_lens(model, tmp_path / "tl")
    for source in (folder, folder / "model.safetensors"):
        back = load_transformer_lens(source)
        assert all(torch.equal(back.weights()[k], v) for k, v in model.weights().items())
    sd, cfg = to_transformer_lens(model)
    torch.save({"state_dict": sd}, tmp_path / "tl" / "weights.pt")
    with pytest.raises(QkovError, match="2 weights files"):
        load_transformer_lens(folder)
    back = load_transformer_lens(tmp_path / "tl" / "weights.pt")
    assert torch.equal(back.W_Q, model.W_Q)
    with pytest.raises(QkovError, match="does not exist"):
        load_transformer_lens(tmp_path / "nope")


def test_module_imports_without_transformer_lens():
    code = (
        "import sys; sys.modules['transformer_lens'] = None\n"
        "import qkov.interop as i\n"
        "from qkov import AttnOnlyTransformer, ModelConfig, QkovError\n"
        "m = AttnOnlyTransformer(ModelConfig(n_layers=1, d_model=8, n_heads=2, d_vocab=5))\n"
        "try:\n    i.to_hooked_transformer(m)\nexcept QkovError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "pip install 'qkov[interop]'" in out.stdout


# ---------------------------------------------------------------------------- layout
def test_transformer_lens_module_still_exports_every_name():
    import qkov.interop as interop
    import qkov.interop.transformer_lens as tl_module

    for name in interop.__all__:
        assert getattr(tl_module, name) is getattr(interop, name), name
    assert "pip install" in tl_module.INSTALL_HINT


def test_per_head_read_out_is_the_einsum_bit_for_bit():
    """The LN and bias folds read a per-layer vector through every head: x W [L, H, d_head]."""
    from qkov.interop.transformer_lens_convert import _read_per_head

    g = torch.Generator().manual_seed(5)
    for L, H, D, Dh in [(1, 4, 32, 8), (3, 4, 33, 8), (2, 3, 17, 5)]:
        x = torch.randn(L, D, generator=g, dtype=torch.float64)
        W = torch.randn(L, H, D, Dh, generator=g, dtype=torch.float64)
        assert torch.equal(_read_per_head(x, W), torch.einsum("ld,lhde->lhe", x, W))


def test_zero_layer_layernorm_checkpoint_folds(tl):
    """A 0-layer LN model (a bigram table behind ln_final) imports with fold_ln: W_E centred,
    ln_final.w folded into W_U (it used to stop with a bare torch.stack RuntimeError)."""
    cfg = tl.HookedTransformerConfig(
        n_layers=0,
        d_model=16,
        n_ctx=8,
        d_head=4,
        n_heads=4,
        d_vocab=20,
        attn_only=True,
        normalization_type="LN",
        device="cpu",
    )
    model = tl.HookedTransformer(cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.ln_final.w.copy_(1 + 0.5 * torch.randn(16, generator=g))
    ours = from_transformer_lens(model, fold_ln=True)
    assert ours.cfg.n_layers == 0
    W_E, W_U = model.W_E.detach(), model.W_U.detach()
    torch.testing.assert_close(ours.W_E.detach(), W_E - W_E.mean(-1, keepdim=True))
    torch.testing.assert_close(ours.W_U.detach(), model.ln_final.w.detach()[:, None] * W_U)
