"""The general model (MLPs, biases, norms) against a re-implementation from the equations.

The reference below shares no code with qkov.model: its own norms, activations (gelu_new
written out as GPT-2's formula), and attention one head at a time, in float64."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import qkov
from qkov import ModelConfig, QkovError, Transformer, load, save_model
from qkov.model import hook_names


def reference_norm(kind: str, x: torch.Tensor, w: dict, name: str, l: int | None):
    """Pre-norm `name` (ln1, ln2, ln_final) of layer l, straight from its definition."""
    if kind == "none":
        return x
    if kind == "layernorm":
        x = x - x.sum(-1, keepdim=True) / x.shape[-1]
    x = x / torch.sqrt((x * x).sum(-1, keepdim=True) / x.shape[-1] + 1e-5)
    if kind == "rms":
        return x
    weight = w[f"{name}_w"] if l is None else w[f"{name}_w"][l]
    x = x * weight
    if kind == "layernorm":
        x = x + (w[f"{name}_b"] if l is None else w[f"{name}_b"][l])
    return x


def reference_act(name: str, x: torch.Tensor) -> torch.Tensor:
    if name == "gelu":
        return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))
    if name == "gelu_new":
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    if name == "relu":
        return x.clamp(min=0)
    if name == "silu":
        return x / (1 + torch.exp(-x))
    raise AssertionError(name)


def reference_logits(cfg: ModelConfig, w: dict, tokens: torch.Tensor) -> torch.Tensor:
    """logits of the pre-norm decoder transformer, one head at a time, float64."""
    w = {k: v.double() for k, v in w.items()}
    zero = {  # absent biases are zero
        "b_Q": torch.zeros(cfg.n_layers, cfg.n_heads, cfg.d_head, dtype=torch.float64),
        "b_O": torch.zeros(cfg.n_layers, cfg.d_model, dtype=torch.float64),
        "b_in": torch.zeros(cfg.n_layers, cfg.d_mlp, dtype=torch.float64),
        "b_out": torch.zeros(cfg.n_layers, cfg.d_model, dtype=torch.float64),
        "b_U": torch.zeros(cfg.d_vocab, dtype=torch.float64),
    }
    zero["b_K"] = zero["b_V"] = zero["b_Q"]
    w = {**zero, **w}
    n = tokens.shape[1]
    x = w["W_E"][tokens]  # [batch, pos, d_model]
    pos = w["W_pos"][:n]
    if cfg.positional == "standard":
        x = x + pos
    causal = torch.tril(torch.ones(n, n, dtype=torch.bool))
    for l in range(cfg.n_layers):
        h_in = reference_norm(cfg.normalization, x, w, "ln1", l)
        qk_in = h_in + pos if cfg.positional == "shortformer" else h_in
        attn = torch.zeros_like(x)
        for h in range(cfg.n_heads):
            q = qk_in @ w["W_Q"][l, h] + w["b_Q"][l, h]
            k = qk_in @ w["W_K"][l, h] + w["b_K"][l, h]
            v = h_in @ w["W_V"][l, h] + w["b_V"][l, h]
            s = q @ k.transpose(1, 2) / math.sqrt(cfg.d_head)
            s = s.masked_fill(~causal, -math.inf)
            attn = attn + (s.softmax(-1) @ v) @ w["W_O"][l, h]
        x = x + attn + w["b_O"][l]
        if cfg.d_mlp:
            m_in = reference_norm(cfg.normalization, x, w, "ln2", l)
            hidden = reference_act(cfg.act_fn, m_in @ w["W_in"][l] + w["b_in"][l])
            x = x + hidden @ w["W_out"][l] + w["b_out"][l]
    return reference_norm(cfg.normalization, x, w, "ln_final", None) @ w["W_U"] + w["b_U"]


def general_model(seed: int = 0, **kw) -> Transformer:
    """A small float64 model whose every tensor (biases, norm weights too) is random."""
    base = dict(n_heads=2, d_model=16, d_head=8, n_ctx=12, d_vocab=37, seed=seed)
    model = Transformer(ModelConfig(**{**base, **kw})).double()
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "W_pos" and model.cfg.positional == "none":
                continue
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.3)
            if name.endswith("_w"):
                p.add_(1.0)
    return model


NORMS = ["none", "rms", "layernorm", "rmsnorm"]
CASES = [
    (d_mlp, norm, bias, positional, n_layers)
    for d_mlp in (0, 24)
    for norm in NORMS
    for bias in (False, True)
    for positional in ("shortformer", "standard", "none")
    if not (positional == "shortformer" and norm in ("layernorm", "rmsnorm"))
    for n_layers in (0, 1, 2, 3)
]


@pytest.mark.parametrize("d_mlp, normalization, bias, positional, n_layers", CASES)
def test_matches_reference(d_mlp, normalization, bias, positional, n_layers):
    act_fn = ("gelu", "gelu_new", "relu", "silu")[n_layers]  # each activation somewhere
    model = general_model(
        n_layers,
        n_layers=n_layers,
        d_mlp=d_mlp,
        normalization=normalization,
        bias=bias,
        positional=positional,
        act_fn=act_fn,
    )
    tokens = torch.randint(0, 37, (3, 12), generator=torch.Generator().manual_seed(1))
    want = reference_logits(model.cfg, model.weights(), tokens)
    with torch.no_grad():
        fast = model(tokens)
        hooked, cache = model.run_with_cache(tokens)
    assert (fast - want).abs().max() < 1e-5
    assert (hooked - want).abs().max() < 1e-5
    assert set(cache) == set(hook_names(model.cfg))


def test_mlp_hooks_edit_the_forward_pass():
    model = general_model(n_layers=1, d_mlp=8, normalization="layernorm", positional="standard")
    tokens = torch.arange(10)[None]
    logits, cache = model.run_with_hooks(
        tokens, hooks={"mlp_out.0": lambda x, _: torch.zeros_like(x)}, cache_names=["resid_mid.0"]
    )
    want = model.unembed(model._norm(cache["resid_mid.0"], "ln_final"))
    assert torch.allclose(logits, want)


def test_weights_are_exactly_the_config_s_tensors():
    cfg = ModelConfig(
        n_layers=2, d_model=16, n_heads=2, d_mlp=24, normalization="layernorm", positional="none"
    )
    w = Transformer(dataclasses.replace(cfg, bias=True)).weights()
    assert {k: list(v.shape) for k, v in w.items() if not k.startswith("W_")} == {
        "b_Q": [2, 2, 8],
        "b_K": [2, 2, 8],
        "b_V": [2, 2, 8],
        "b_O": [2, 16],
        "b_in": [2, 24],
        "b_out": [2, 16],
        "b_U": [4096],
        "ln1_w": [2, 16],
        "ln1_b": [2, 16],
        "ln2_w": [2, 16],
        "ln2_b": [2, 16],
        "ln_final_w": [16],
        "ln_final_b": [16],
    }
    assert list(w["W_in"].shape) == [2, 16, 24] and list(w["W_out"].shape) == [2, 24, 16]
    model = Transformer(dataclasses.replace(cfg, positional="standard", bias=True))
    assert "W_pos" in w
    assert model.cfg.n_params == sum(p.numel() for p in model.parameters())
    assert set(Transformer(ModelConfig()).weights()) == set(qkov.model.WEIGHT_NAMES)


def test_general_model_round_trips_through_a_checkpoint(tmp_path):
    model = general_model(
        n_layers=2, d_mlp=24, normalization="layernorm", bias=True, positional="standard"
    ).float()
    save_model(model, tmp_path / "m")
    loaded = load(tmp_path / "m")
    assert loaded.cfg == model.cfg
    for name, w in model.weights().items():
        assert torch.equal(w, loaded.weights()[name]), name
    tokens = torch.arange(12)[None]
    with torch.no_grad():
        assert torch.equal(model(tokens), loaded(tokens))


def test_checkpoint_tensors_must_match_the_config(tmp_path):
    model = general_model(n_layers=1, d_mlp=8, normalization="rmsnorm", positional="standard")
    save_model(model.float(), tmp_path / "m")
    w = load_file(str(tmp_path / "m/model.safetensors"))
    save_file({k: v for k, v in w.items() if k != "W_in"}, str(tmp_path / "m/model.safetensors"))
    with pytest.raises(QkovError, match=r"is missing \['W_in'\], which a model with d_mlp=8") as e:
        load(tmp_path / "m")
    assert "\n" not in str(e.value)
    attn = Transformer(ModelConfig(n_layers=1, d_model=16, n_heads=2, d_vocab=37))
    save_model(attn, tmp_path / "a")
    w = load_file(str(tmp_path / "a/model.safetensors"))
    save_file({**w, "ln1_w": torch.ones(1, 16)}, str(tmp_path / "a/model.safetensors"))
    with pytest.raises(QkovError, match=r"has tensors \['ln1_w'\] that a model with d_mlp=0"):
        load(tmp_path / "a")


@pytest.mark.parametrize("name", ["attn2", "mlp2"])
def test_shipped_checkpoints_match_the_reference(tmp_path, name):
    """The shipped models (float16 on disk, upcast on load) give the reference
    implementation's logits, in the fast forward and with every hook cached; they save to
    the same tensors, and nothing more."""
    model = load(qkov.shipped(name))
    assert all(w.dtype == torch.float32 for w in model.weights().values())
    tokens = torch.randint(
        0, model.cfg.d_vocab, (2, 24), generator=torch.Generator().manual_seed(0)
    )
    w = {k: v.double() for k, v in model.weights().items()}
    want = reference_logits(model.cfg, w, tokens)
    with torch.no_grad():
        fast = model(tokens).double()
        hooked, _ = model.run_with_hooks(tokens, cache_names=lambda n: True)
    torch.testing.assert_close(fast, want, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(hooked.double(), want, atol=2e-4, rtol=1e-4)
    save_model(model, tmp_path / "again")
    again = load_file(str(tmp_path / "again/model.safetensors"))
    assert set(again) == set(model.weights())
    for k, v in model.weights().items():
        assert torch.equal(again[k], v), k


def test_fused_loss_with_b_U_equals_cross_entropy_of_the_logits():
    model = general_model(
        n_layers=2, d_mlp=24, normalization="layernorm", bias=True, positional="standard"
    )
    tokens = torch.randint(0, 37, (3, 12), generator=torch.Generator().manual_seed(2))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    fused = model(inputs, targets)
    fused_grads = torch.autograd.grad(fused, list(model.parameters()), allow_unused=True)
    plain = F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten())
    plain_grads = torch.autograd.grad(plain, list(model.parameters()), allow_unused=True)
    assert abs(fused.item() - plain.item()) < 1e-10
    for (name, _), a, b in zip(model.named_parameters(), fused_grads, plain_grads, strict=True):
        if name == "W_pos" and a is None:
            continue
        assert (a - b).abs().max() < 1e-10, name
    assert fused_grads[[n for n, _ in model.named_parameters()].index("b_U")].abs().sum() > 0


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # HookedTransformer's own
@pytest.mark.parametrize(
    "normalization, tl_norm, act_fn",
    [("layernorm", "LN", "gelu_new"), ("rmsnorm", "RMS", "gelu"), ("rms", "RMSPre", "silu")],
)
def test_same_weights_give_transformer_lens_s_logits(normalization, tl_norm, act_fn):
    """TransformerLens's HookedTransformer with the same config and weights, as a peer."""
    tl = pytest.importorskip("transformer_lens")
    model = general_model(
        n_layers=2,
        d_mlp=24,
        normalization=normalization,
        bias=True,
        positional="standard",
        act_fn=act_fn,
    )
    c = model.cfg
    tl_cfg = tl.HookedTransformerConfig(
        n_layers=c.n_layers,
        d_model=c.d_model,
        n_heads=c.n_heads,
        d_head=c.d_head,
        d_mlp=c.d_mlp,
        n_ctx=c.n_ctx,
        d_vocab=c.d_vocab,
        act_fn=act_fn,
        normalization_type=tl_norm,
        positional_embedding_type="standard",
        dtype=torch.float64,
        device="cpu",
    )
    peer = tl.HookedTransformer(tl_cfg)
    w = model.weights()
    sd = {"embed.W_E": w["W_E"], "pos_embed.W_pos": w["W_pos"], "unembed.W_U": w["W_U"]}
    sd["unembed.b_U"] = w["b_U"]
    for l in range(c.n_layers):
        for name in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O"):
            sd[f"blocks.{l}.attn.{name}"] = w[name][l]
        for name in ("W_in", "b_in", "W_out", "b_out"):
            sd[f"blocks.{l}.mlp.{name}"] = w[name][l]
        for ln in ("ln1", "ln2"):
            for p in ("w", "b"):
                if f"{ln}_{p}" in w:
                    sd[f"blocks.{l}.{ln}.{p}"] = w[f"{ln}_{p}"][l]
    for p in ("w", "b"):
        if f"ln_final_{p}" in w:
            sd[f"ln_final.{p}"] = w[f"ln_final_{p}"]
    missing, unexpected = peer.load_state_dict(sd, strict=False)
    assert not unexpected and all(k.endswith(("IGNORE", ".mask")) for k in missing), missing
    tokens = torch.randint(0, 37, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (model(tokens) - peer(tokens)).abs().max() < 1e-8


@pytest.mark.parametrize("positional", ["shortformer", "standard"])
def test_hooked_paths_agree_with_and_without_the_pattern(positional):
    """run_with_hooks forms scores/pattern and head_out only when hooked or cached, else it
    takes SDPA and one W_O matmul: both give the reference logits, and a z knock-out equals
    the head_out knock-out."""
    model = general_model(positional=positional, n_layers=2, d_mlp=16, normalization="rms")
    tokens = torch.randint(
        0, model.cfg.d_vocab, (3, 10), generator=torch.Generator().manual_seed(4)
    )
    want = reference_logits(model.cfg, model.weights(), tokens)
    with torch.no_grad():
        lean, _ = model.run_with_hooks(tokens)
        full, _ = model.run_with_hooks(tokens, cache_names=lambda n: True)

        def zero_head(out, name):
            out = out.clone()
            out[:, 1] = 0
            return out

        by_z, _ = model.run_with_hooks(tokens, hooks={"z.0": zero_head})
        by_out, _ = model.run_with_hooks(tokens, hooks={"head_out.0": zero_head})
    torch.testing.assert_close(lean.double(), want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(full.double(), want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(by_z, by_out, atol=1e-5, rtol=1e-5)
    assert (by_z - lean).abs().max() > 1e-3  # the knock-out changed something
