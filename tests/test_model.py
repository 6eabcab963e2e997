"""The model's hooks, cache, weights and guards (its logits against an independent
re-implementation from the equations: tests/test_model_reference.py)."""

import math

import pytest
import torch

import factories
from qkov import AttnOnlyTransformer, ModelConfig, QkovError
from qkov.model import hook_names


def random_model(n_layers: int, positional: str, seed: int = 0, normalization: str = "none"):
    """This file's models: d_head 8 (not d_model / n_heads) and an odd vocabulary."""
    return factories.random_model(
        n_layers,
        positional,
        normalization=normalization,
        d_head=8,
        d_vocab=37,
        init_std=0.3,
        seed=seed,
    )


def test_shortformer_keeps_positions_out_of_the_stream():
    model = random_model(2, "shortformer")
    tokens = torch.randint(0, 37, (2, 12))
    _, cache = model.run_with_cache(tokens)
    # The stream entering layer 0 is the token embedding alone.
    assert torch.equal(cache["resid_pre.0"], model.W_E[tokens])


def test_cache_shapes_and_pattern_rows():
    model = random_model(2, "shortformer")
    _, cache = model.run_with_cache(torch.randint(0, 37, (2, 12)))
    assert set(cache) == set(hook_names(model.cfg))
    assert cache["pattern.1"].shape == (2, 3, 12, 12)
    assert cache["head_out.0"].shape == (2, 3, 12, 24)
    torch.testing.assert_close(cache["pattern.0"].sum(-1), torch.ones(2, 3, 12))
    assert cache["pattern.0"].triu(1).abs().max() == 0  # causal


def test_resid_is_embedding_plus_head_outputs():
    model = random_model(2, "standard")
    tokens = torch.randint(0, 37, (2, 12))
    logits, cache = model.run_with_cache(tokens)
    resid = (
        cache["embed"]
        + cache["pos_embed"]
        + cache["head_out.0"].sum(1)
        + cache["head_out.1"].sum(1)
    )
    torch.testing.assert_close(resid @ model.W_U, logits)


def test_hook_zero_ablates_one_head():
    model = random_model(1, "shortformer")
    tokens = torch.randint(0, 37, (2, 12))
    clean, cache = model.run_with_cache(tokens)

    def drop_head_1(x, name):
        x = x.clone()
        x[:, 1] = 0
        return x

    ablated, _ = model.run_with_hooks(tokens, hooks={"head_out.0": drop_head_1})
    expected = clean - cache["head_out.0"][:, 1] @ model.W_U
    torch.testing.assert_close(ablated, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("positional", ["shortformer", "standard", "rotary"])
def test_a_pass_started_at_a_layer_from_its_cached_stream_gives_the_same_logits(positional):
    """run_with_hooks(start=(l, resid_pre.l)) runs layers l.. only: the same logits and later
    activations as the whole pass, on a model with MLPs, biases and a learned norm; a stream
    of the wrong shape or a layer out of range is refused."""
    norm = "rms" if positional == "shortformer" else "layernorm"
    model = factories.general_model(3, positional=positional, normalization=norm)
    tokens = factories.random_tokens(model)
    logits, cache = model.run_with_cache(tokens)
    seen: list[str] = []
    hooks = {f"resid_pre.{i}": lambda x, name: seen.append(name) for i in range(3)}
    for l in range(3):
        seen.clear()
        out, later = model.run_with_hooks(
            tokens, hooks, cache_names=[f"pattern.{l}"], start=(l, cache[f"resid_pre.{l}"])
        )
        assert seen == [f"resid_pre.{i}" for i in range(l, 3)]  # earlier layers not run
        torch.testing.assert_close(out, logits, rtol=0, atol=1e-5)
        torch.testing.assert_close(later[f"pattern.{l}"], cache[f"pattern.{l}"])
    with pytest.raises(QkovError, match="start: layer 3 of 3"):
        model.run_with_hooks(tokens, start=(3, cache["resid_pre.2"]))
    with pytest.raises(QkovError, match="expected"):
        model.run_with_hooks(tokens, start=(1, cache["resid_pre.1"][:, :-1]))


def test_a_pass_stopped_at_a_hook_point_skips_what_follows():
    """run_with_hooks(stop=name) ends the pass once `name` is computed: the cache up to it
    equals the whole pass's, nothing after it runs (no logits), a pattern nobody caches is
    still computed to stop at, and an unknown name is refused."""
    model = factories.general_model(3, positional="rotary", normalization="rms")
    tokens = factories.random_tokens(model)
    _, whole = model.run_with_cache(tokens)
    seen: list[str] = []
    hooks = {name: lambda x, name: seen.append(name) for name in ("z.1", "resid_pre.2")}
    logits, cache = model.run_with_hooks(
        tokens, hooks, cache_names=lambda n: n.startswith(("v.", "pattern.")), stop="pattern.1"
    )
    assert logits is None and seen == []  # z.1 comes after pattern.1
    assert sorted(cache) == ["pattern.0", "pattern.1", "v.0", "v.1"]
    for name, x in cache.items():
        torch.testing.assert_close(x, whole[name], rtol=0, atol=1e-5)  # whole: head_out too
    stopped: list[str] = []
    model.run_with_hooks(tokens, {"pattern.2": lambda x, n: stopped.append(n)}, stop="pattern.2")
    assert stopped == ["pattern.2"]
    bare = model.run_with_hooks(tokens, stop="pattern.0")  # computed to stop at, not cached
    assert bare == (None, {})
    with pytest.raises(QkovError, match="unknown hook name 'pattern.3' to stop at"):
        model.run_with_hooks(tokens, stop="pattern.3")


def test_from_weights_round_trip_and_settable():
    model = random_model(2, "shortformer")
    w = {k: v.clone() for k, v in model.weights().items()}
    w["W_O"] = torch.zeros_like(w["W_O"])
    other = AttnOnlyTransformer.from_weights(model.cfg, w)
    tokens = torch.randint(0, 37, (2, 12))
    # With W_O = 0 every head writes nothing: the model is its direct path W_E W_U.
    torch.testing.assert_close(other(tokens), model.W_E[tokens] @ model.W_U)


@pytest.mark.parametrize("positional", ["shortformer", "none", "rotary"])
def test_an_empty_model_draws_nothing_and_allocates_in_its_dtype(positional, monkeypatch):
    """Loaders allocate with `empty` and write every weight: no random draw (a draw on the
    meta device used to import torch._dynamo, ~0.9 s of every load) and no float32 copy of a
    bf16 model on the way."""
    cfg = ModelConfig(
        n_layers=2, d_model=16, n_heads=2, d_vocab=37, n_ctx=12, d_mlp=32, positional=positional
    )

    def no_draw(*args, **kwargs):
        raise AssertionError("Transformer.empty drew random weights")

    monkeypatch.setattr(torch, "randn", no_draw)
    model = AttnOnlyTransformer.empty(cfg, dtype=torch.bfloat16)
    monkeypatch.undo()
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert (model.W_pos is None) == (positional == "rotary")
    # load_weights writes every weight: the empty model then equals the one it copies
    source = AttnOnlyTransformer(cfg).to(torch.bfloat16)
    model.load_weights(source.weights())
    tokens = torch.randint(0, 37, (2, 12))
    torch.testing.assert_close(model(tokens), source(tokens))


def test_bad_weights_and_tokens():
    model = random_model(1, "shortformer")
    w = model.weights()
    with pytest.raises(QkovError, match="W_Q has shape"):
        AttnOnlyTransformer.from_weights(model.cfg, {**w, "W_Q": torch.zeros(1, 3, 24, 9)})
    with pytest.raises(QkovError, match="missing"):
        AttnOnlyTransformer.from_weights(model.cfg, {k: v for k, v in w.items() if k != "W_U"})
    with pytest.raises(QkovError, match="out of range"):
        model(torch.tensor([[1, 2, 37]]))
    with pytest.raises(QkovError, match="out of range"):
        model(torch.tensor([[-1, 2]]))
    with pytest.raises(QkovError, match="longer than n_ctx=12"):
        model(torch.zeros(1, 13, dtype=torch.long))
    with pytest.raises(QkovError, match="integer ids"):
        model(torch.zeros(1, 3))
    with pytest.raises(QkovError, match="unknown hook"):
        model.run_with_hooks(torch.zeros(1, 3, dtype=torch.long), hooks={"nope": print})


def test_gradients_reach_every_used_weight():
    model = random_model(2, "shortformer")
    model(torch.randint(0, 37, (2, 12))).sum().backward()
    for name in ("W_E", "W_pos", "W_Q", "W_K", "W_V", "W_O", "W_U"):
        assert getattr(model, name).grad is not None, name


def test_pos_init_std_sets_the_scale_of_W_pos_alone():
    base = dict(n_layers=1, n_heads=2, d_model=64, n_ctx=64, d_vocab=50, init_std=0.02)
    a = AttnOnlyTransformer(ModelConfig(**base))
    b = AttnOnlyTransformer(ModelConfig(**base, pos_init_std=1.0))
    assert abs(float(b.W_pos.std()) - 1.0) < 0.05 and abs(float(a.W_pos.std()) - 0.02) < 0.002
    assert torch.equal(a.W_E, b.W_E) and torch.equal(a.W_Q, b.W_Q)


GENERAL = [
    {"d_mlp": 8},
    {"bias": True},
    {"normalization": "layernorm", "positional": "standard"},
    {"normalization": "rmsnorm", "positional": "none"},
    {"d_mlp": 32, "bias": True, "normalization": "layernorm", "positional": "standard"},
]


def _floats(x: object) -> list[float]:
    if isinstance(x, dict):
        return [f for v in x.values() for f in _floats(v)]
    if isinstance(x, (list, tuple)):
        return [f for v in x for f in _floats(v)]
    return [float(x)] if isinstance(x, float) else []


@pytest.mark.parametrize("kw", GENERAL, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_every_analysis_runs_on_general_models(kw):
    """No analysis refuses a model with MLPs, biases or a learned norm any more (the guard
    this test once checked is gone): analyze runs every one on a 2-layer model and every
    number it returns is finite; the head scores (copying included) and the training probe
    too. The numbers themselves are checked in test_heads.py, test_analyze.py,
    test_circuits.py, test_ablation.py, test_composition.py and test_trigrams.py."""
    from qkov import analyze, heads
    from qkov.training_probe import training_probe

    cfg = ModelConfig(n_layers=2, n_heads=2, d_model=16, n_ctx=16, d_vocab=37, **kw)
    model = AttnOnlyTransformer(cfg)
    tokens = torch.randint(0, 37, (2, 10), generator=torch.Generator().manual_seed(0))
    scores = heads.head_scores(model, tokens)
    assert all(torch.isfinite(getattr(scores, n)).all() for n in ("copying", "previous_token"))
    assert math.isfinite(training_probe(model)["probe_induction_score"])
    m = analyze.analyze(model, log=None)["models"][0]
    for key in ("loss", "icl", "bigrams", "heads", "attention", "composition"):
        assert m[key], key
    assert {"induction_circuits", "term_importance", "probe_icl_score"} <= set(m)
    kinds = [t["kind"] for t in m["term_importance"]["terms"]]
    assert kinds.count("mlp") == (2 if cfg.d_mlp else 0) and kinds.count("head") == 4
    numbers = _floats({k: v for k, v in m.items() if k != "config"})
    assert len(numbers) > 100 and all(math.isfinite(f) for f in numbers)
