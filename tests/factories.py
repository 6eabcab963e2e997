"""What several test files build: small random models, random tokens, and the multiset
comparison of eigenvalue spectra (which have no natural order)."""

from __future__ import annotations

import torch

from qkov import AttnOnlyTransformer, ModelConfig, Transformer


def random_model(
    n_layers: int = 1,
    positional: str = "shortformer",
    *,
    normalization: str = "none",
    n_heads: int = 3,
    d_model: int = 24,
    d_head: int | None = None,
    n_ctx: int = 12,
    d_vocab: int = 40,
    init_std: float = 0.4,
    seed: int = 0,
) -> AttnOnlyTransformer:
    """A small model with random weights, large enough (init_std) that patterns are far
    from uniform, so a wrong term or a wrong transpose shows in the logits."""
    cfg = ModelConfig(
        n_layers=n_layers,
        n_heads=n_heads,
        d_model=d_model,
        d_head=d_head,
        n_ctx=n_ctx,
        d_vocab=d_vocab,
        positional=positional,
        normalization=normalization,
        init_std=init_std,
        seed=seed,
    )
    return AttnOnlyTransformer(cfg)


def random_tokens(model: AttnOnlyTransformer, batch: int = 3, seed: int = 0) -> torch.Tensor:
    """[batch, n_ctx] uniform random token ids for `model`."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(model.cfg.d_vocab, (batch, model.cfg.n_ctx), generator=g)


def match_multisets(a: torch.Tensor, b: torch.Tensor, tol: float) -> None:
    """Every element of a pairs with a distinct element of b within tol (greedy, nearest)."""
    assert a.numel() == b.numel(), (a, b)
    left = list(b.tolist())
    for z in a.tolist():
        dist = [abs(z - w) for w in left]
        i = min(range(len(left)), key=dist.__getitem__)
        assert dist[i] <= tol, f"{z} has no partner in {left}"
        left.pop(i)


def nonzero(eigs: torch.Tensor, tol: float) -> torch.Tensor:
    """The entries of a spectrum with |lambda| > tol."""
    return eigs[eigs.abs() > tol]


def general_model(
    n_layers: int = 2,
    *,
    normalization: str = "layernorm",
    d_mlp: int = 32,
    bias: bool = True,
    act_fn: str = "gelu",
    positional: str = "standard",
    n_heads: int = 3,
    d_model: int = 24,
    n_ctx: int = 12,
    d_vocab: int = 40,
    init_std: float = 0.4,
    seed: int = 0,
) -> Transformer:
    """A small general model (MLPs, biases, a learned norm) whose biases and norm weights
    are random too (the constructor starts them at 0 and 1, which would hide a missed fold)."""
    cfg = ModelConfig(
        n_layers=n_layers,
        n_heads=n_heads,
        d_model=d_model,
        n_ctx=n_ctx,
        d_vocab=d_vocab,
        positional=positional,
        normalization=normalization,
        d_mlp=d_mlp,
        act_fn=act_fn,
        bias=bias,
        init_std=init_std,
        seed=seed,
    )
    model = Transformer(cfg)
    randomise_biases_and_norms(model, seed + 1)
    return model


@torch.no_grad()
def randomise_biases_and_norms(model: Transformer, seed: int) -> None:
    """Biases ~ N(0, 0.3) and norm weights ~ 1 + N(0, 0.3), in place (a fresh model's are 0
    and 1, which would hide a bias or norm weight an analysis forgot)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.startswith("b_") or name.endswith("_b"):
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
        elif name.endswith("_w"):
            p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))


def induction_model(noise: float = 0.05, seed: int = 0) -> Transformer:
    """Layer 0: L0H0 attends to the previous position (W_pos only) and writes the token it
    reads into a second subspace; L0H1 random. Layer 1: L1H0's query reads the current
    token, its key that second subspace (K-composition through L0H0); L1H1 random. Every
    weight has Gaussian noise added, so every term is non-zero."""
    V = n_ctx = d_head = 12
    D = 2 * V + n_ctx
    cfg = ModelConfig(
        n_layers=2, n_heads=2, d_model=D, d_head=d_head, n_ctx=n_ctx, d_vocab=V, seed=seed
    )
    model = Transformer(cfg)
    g = torch.Generator().manual_seed(seed)
    W = {n: noise * torch.randn(p.shape, generator=g) for n, p in model.weights().items()}
    eye, c = torch.eye(V), 5.0
    W["W_E"][:, :V] += eye  # tokens in dims 0..V-1
    W["W_pos"][:, 2 * V :] += torch.eye(n_ctx)  # positions in dims 2V..2V+n_ctx-1
    W["W_Q"][0, 0, 2 * V :, :] += c * torch.eye(n_ctx)  # q_p = c e_p
    W["W_K"][0, 0, 2 * V : 3 * V - 1, 1:] += c * torch.eye(n_ctx - 1)  # k_s = c e_{s+1}
    W["W_V"][0, 0, :V, :] += eye
    W["W_O"][0, 0, :, V : 2 * V] += eye  # writes the previous token into dims V..2V-1
    W["W_Q"][1, 0, :V, :] += c * eye  # the current token
    W["W_K"][1, 0, V : 2 * V, :] += c * eye  # the token before the source
    W["W_V"][1, 0, :V, :] += eye
    W["W_O"][1, 0, :, :V] += eye
    W["W_U"][:V, :] += eye
    return Transformer.from_weights(cfg, W)


def circuit_model(n_layers=1, positional="shortformer", seed=0, n_heads=2, std=0.5, norm="none"):
    """The circuit and path tests' models: narrower than the default (d_model 16, 10
    positions)."""
    return random_model(
        n_layers,
        positional,
        normalization=norm,
        n_heads=n_heads,
        d_model=16,
        n_ctx=10,
        init_std=std,
        seed=seed,
    )


def probed_run(out):
    """Train (seconds) a 2-layer run on the induction task that probes every step and keeps
    3 snapshots, its last step (8) among them, into `out`; returns `out`."""
    from qkov.config import TrainConfig
    from qkov.train import train

    cfg = ModelConfig(n_layers=2, n_heads=2, d_model=16, n_ctx=16, d_vocab=32)
    tc = TrainConfig(
        corpus="induction-task",
        steps=8,
        batch_size=4,
        probe_interval=1,
        eval_interval=4,
        keep_checkpoints=3,
        warmup=1,
    )
    train(cfg, tc, out, progress=False)
    return out


def add_start_token(tokenizer, token: str) -> int:
    """Make `tokenizer` put `token` in front of every text, as Llama's post-processor puts
    its beginning-of-text token (a special token, added to the vocabulary if new); its id."""
    from tokenizers import processors

    tokenizer.add_special_tokens([token])
    token_id = tokenizer.token_to_id(token)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{token} $A", special_tokens=[(token, token_id)]
    )
    return token_id
