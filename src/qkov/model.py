"""AttnOnlyTransformer: an attention-only transformer whose weights are the paper's matrices.

Row-vector convention throughout (x @ W, as in code; the paper writes the transposes):

    W_E  [d_vocab, d_model]                 token embedding
    W_pos [n_ctx, d_model]                  positional embedding
    W_Q, W_K, W_V [n_layers, n_heads, d_model, d_head]
    W_O  [n_layers, n_heads, d_head, d_model]
    W_U  [d_model, d_vocab]                 unembedding

No biases, no MLP. Attention scores are scaled by 1/sqrt(d_head) with a causal mask. With
positional="shortformer" W_pos enters only the inputs of queries and keys. With
normalization="rms" each head's input and the unembedding's input are divided by their
per-position RMS (no learned weights; W_pos is added after it, as in TransformerLens).

Hook points (names for `run_with_cache` and `run_with_hooks`):

    embed              [batch, pos, d_model]   W_E[tokens]
    pos_embed          [pos, d_model]          W_pos[:pos]
    resid_pre.{l}      [batch, pos, d_model]   residual stream entering layer l
    scale.{l}          [batch, pos, 1]         its RMS (normalization="rms" only)
    q.{l} k.{l} v.{l}  [batch, head, pos, d_head]
    scores.{l}         [batch, head, dest, src] scaled, masked attention scores
    pattern.{l}        [batch, head, dest, src] attention pattern (softmax of scores)
    z.{l}              [batch, head, pos, d_head] pattern-weighted values
    head_out.{l}       [batch, head, pos, d_model] each head's output written to the stream
    resid_post.{l}     [batch, pos, d_model]   residual stream leaving layer l
    scale.final        [batch, pos, 1]         RMS of the final stream (normalization="rms")
    logits             [batch, pos, d_vocab]

A hook is `fn(tensor, name) -> tensor | None`; returning a tensor replaces the activation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qkov.config import ModelConfig
from qkov.errors import QkovError
from qkov.loss import unembed_cross_entropy

Hook = Callable[[Tensor, str], Tensor | None]
RMS_EPS = 1e-5
WEIGHT_NAMES = ("W_E", "W_pos", "W_Q", "W_K", "W_V", "W_O", "W_U")


def weight_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The shape of each of the paper's matrices for a config (see the module docstring)."""
    L, H, D, Dh, V = cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head, cfg.d_vocab
    return {
        "W_E": (V, D),
        "W_pos": (cfg.n_ctx, D),
        "W_Q": (L, H, D, Dh),
        "W_K": (L, H, D, Dh),
        "W_V": (L, H, D, Dh),
        "W_O": (L, H, Dh, D),
        "W_U": (D, V),
    }


def check_weight_shapes(cfg: ModelConfig, weights: dict[str, Tensor], source: str) -> None:
    """Every tensor of `weights` must have the shape `cfg` implies: a QkovError naming the
    first that does not. Cheap, so a loader calls it before allocating the model (a hostile
    config.json with d_vocab=10**12 is refused, not allocated)."""
    for name, shape in weight_shapes(cfg).items():
        if name in weights and tuple(weights[name].shape) != shape:
            raise QkovError(
                f"{source}: {name} has shape {list(weights[name].shape)} but the config "
                f"implies {list(shape)}: does config.json match the weights?"
            )


def rms_scale(resid: Tensor) -> Tensor:
    """[..., d_model] -> [..., 1]: the divisor of normalization="rms", sqrt(mean(x^2) + eps)."""
    return (resid.pow(2).mean(-1, keepdim=True) + RMS_EPS).sqrt()


def hook_names(cfg: ModelConfig) -> list[str]:
    """Every hook point name of a model with this config, in forward order."""
    names = ["embed", "pos_embed"]
    rms = cfg.normalization == "rms"
    for l in range(cfg.n_layers):
        names += [
            f"{n}.{l}"
            for n in (
                "resid_pre",
                *(("scale",) if rms else ()),
                "q",
                "k",
                "v",
                "scores",
                "pattern",
                "z",
                "head_out",
                "resid_post",
            )
        ]
    return names + (["scale.final"] if rms else []) + ["logits"]


class AttnOnlyTransformer(nn.Module):
    """Attention-only transformer; weights are nn.Parameters named as in the paper."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tokenizer = None  # a tokenizers.Tokenizer when loaded from a checkpoint dir
        self.token_counts: Tensor | None = None  # [d_vocab] train-split counts (token_counts.json)
        L, H, D, Dh, V = cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head, cfg.d_vocab
        g = torch.Generator().manual_seed(cfg.seed)

        def init(*shape: int, std: float = cfg.init_std) -> nn.Parameter:
            return nn.Parameter(torch.randn(*shape, generator=g) * std)

        self.W_E = init(V, D)
        self.W_pos = init(cfg.n_ctx, D, std=cfg.pos_init_std or cfg.init_std)
        if cfg.positional == "none":
            self.W_pos.data.zero_()
            self.W_pos.requires_grad_(False)
        self.W_Q = init(L, H, D, Dh)
        self.W_K = init(L, H, D, Dh)
        self.W_V = init(L, H, D, Dh)
        # Scale the writes to the residual stream down with depth (GPT-2 style).
        self.W_O = init(L, H, Dh, D, std=cfg.init_std / math.sqrt(2 * max(L, 1)))
        self.W_U = init(D, V)

    # ------------------------------------------------------------------ weights
    @classmethod
    def from_weights(cls, cfg: ModelConfig, weights: dict[str, Tensor]) -> AttnOnlyTransformer:
        """Build a model from a dict of the paper's matrices (missing W_pos ok if unused)."""
        model = cls(cfg)
        model.load_weights(weights)
        return model

    def load_weights(self, weights: dict[str, Tensor], source: str = "weights") -> None:
        unknown = sorted(set(weights) - set(WEIGHT_NAMES))
        if unknown:
            raise QkovError(
                f"{source} has unknown tensors {unknown}: expected {list(WEIGHT_NAMES)}"
            )
        required = [n for n in WEIGHT_NAMES if not (n == "W_pos" and self.cfg.positional == "none")]
        missing = [n for n in required if n not in weights]
        if missing:
            raise QkovError(f"{source} is missing {missing}: was it saved by qkov?")
        check_weight_shapes(self.cfg, weights, source)
        with torch.no_grad():
            for name, value in weights.items():
                param: nn.Parameter = getattr(self, name)
                if not torch.is_floating_point(value):
                    raise QkovError(f"{source}: {name} has dtype {value.dtype}, expected float")
                param.copy_(value.to(param.dtype))
            if self.cfg.positional == "none":
                self.W_pos.zero_()

    def weights(self) -> dict[str, Tensor]:
        """The paper's matrices by name (detached views, same storage)."""
        return {name: getattr(self, name).detach() for name in WEIGHT_NAMES}

    @property
    def device(self) -> torch.device:
        return self.W_E.device

    # ------------------------------------------------------------------ forward
    def check_tokens(self, tokens: Tensor) -> Tensor:
        """Validate token ids; returns [batch, pos] (a 1-D input gets a batch axis)."""
        if not isinstance(tokens, Tensor):
            tokens = torch.as_tensor(tokens)
        if tokens.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
            raise QkovError(f"tokens must be integer ids, got dtype {tokens.dtype}")
        if tokens.ndim == 1:
            tokens = tokens[None]
        if tokens.ndim != 2:
            raise QkovError(f"tokens must be [batch, pos], got shape {list(tokens.shape)}")
        n = tokens.shape[1]
        if n == 0:
            raise QkovError("tokens is empty: pass at least one token per sequence")
        if n > self.cfg.n_ctx:
            raise QkovError(
                f"sequence of {n} tokens is longer than n_ctx={self.cfg.n_ctx}: "
                "truncate it or use a model with a larger n_ctx"
            )
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= self.cfg.d_vocab:
            raise QkovError(
                f"token id {hi if hi >= self.cfg.d_vocab else lo} is out of range "
                f"[0, {self.cfg.d_vocab}): was the text encoded with this model's tokenizer?"
            )
        return tokens.long().to(self.device)

    def forward(self, tokens: Tensor, targets: Tensor | None = None) -> Tensor:
        """tokens [batch, pos] -> logits [batch, pos, d_vocab] (fast path, SDPA); with
        targets [batch, pos], the mean next-token cross-entropy instead, fused with the
        unembedding (qkov.loss: the logits are never materialised)."""
        resid = self.resid_final(tokens)
        if targets is None:
            return resid @ self.W_U
        targets = self.check_tokens(targets)
        if targets.shape != resid.shape[:-1]:
            raise QkovError(
                f"targets have shape {list(targets.shape)} but tokens {list(resid.shape[:-1])}: "
                "pass one target id per input token"
            )
        return unembed_cross_entropy(resid, self.W_U, targets)

    def resid_final(self, tokens: Tensor) -> Tensor:
        """tokens [batch, pos] -> the final residual stream [batch, pos, d_model] (SDPA), as
        the unembedding reads it (divided by its RMS with normalization="rms")."""
        tokens = self.check_tokens(tokens)
        cfg = self.cfg
        n = tokens.shape[1]
        resid = self.W_E[tokens]
        pos = self.W_pos[:n]
        if cfg.positional == "standard":
            resid = resid + pos
        B, H, D, Dh = tokens.shape[0], cfg.n_heads, cfg.d_model, cfg.d_head
        rms = cfg.normalization == "rms"
        for l in range(cfg.n_layers):
            # Stack heads: [d_model, n_heads * d_head]; one matmul per projection.
            W_Q = self.W_Q[l].permute(1, 0, 2).reshape(D, H * Dh)
            W_K = self.W_K[l].permute(1, 0, 2).reshape(D, H * Dh)
            W_V = self.W_V[l].permute(1, 0, 2).reshape(D, H * Dh)
            x = resid / rms_scale(resid) if rms else resid
            qk_in = x + pos if cfg.positional == "shortformer" else x
            q = (qk_in @ W_Q).view(B, n, H, Dh).transpose(1, 2)
            k = (qk_in @ W_K).view(B, n, H, Dh).transpose(1, 2)
            v = (x @ W_V).view(B, n, H, Dh).transpose(1, 2)
            z = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            z = z.transpose(1, 2).reshape(B, n, H * Dh)
            resid = resid + z @ self.W_O[l].reshape(H * Dh, D)
        return resid / rms_scale(resid) if rms else resid

    def run_with_hooks(
        self,
        tokens: Tensor,
        hooks: dict[str, Hook] | None = None,
        cache_names: Iterable[str] | Callable[[str], bool] | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Explicit forward pass: apply `hooks` by name and cache the named activations.

        cache_names: None caches nothing, a collection of names, or a predicate on names.
        Returns (logits, cache)."""
        tokens = self.check_tokens(tokens)
        hooks = dict(hooks or {})
        known = set(hook_names(self.cfg))
        bad = sorted(set(hooks) - known)
        if bad:
            raise QkovError(f"unknown hook names {bad}: see qkov.model.hook_names(cfg)")
        if cache_names is None:
            want: Callable[[str], bool] = lambda name: False  # noqa: E731
        elif callable(cache_names):
            want = cache_names
        else:
            wanted = set(cache_names)
            want = wanted.__contains__
        cache: dict[str, Tensor] = {}

        def point(name: str, x: Tensor) -> Tensor:
            fn = hooks.get(name)
            if fn is not None:
                out = fn(x, name)
                if out is not None:
                    if out.shape != x.shape:
                        raise QkovError(
                            f"hook on {name} returned shape {list(out.shape)}, "
                            f"expected {list(x.shape)}"
                        )
                    x = out
            if want(name):
                cache[name] = x
            return x

        cfg = self.cfg
        n = tokens.shape[1]
        resid = point("embed", self.W_E[tokens])
        pos = point("pos_embed", self.W_pos[:n])
        if cfg.positional == "standard":
            resid = resid + pos
        mask = torch.ones(n, n, dtype=torch.bool, device=self.device).tril()
        scale = 1.0 / math.sqrt(cfg.d_head)
        rms = cfg.normalization == "rms"
        for l in range(cfg.n_layers):
            resid = point(f"resid_pre.{l}", resid)
            x = resid / point(f"scale.{l}", rms_scale(resid)) if rms else resid
            qk_in = (x + pos if cfg.positional == "shortformer" else x)[:, None]
            # [batch, 1, pos, d_model] broadcasts over heads
            q = point(f"q.{l}", qk_in @ self.W_Q[l])  # [batch, head, pos, d_head]
            k = point(f"k.{l}", qk_in @ self.W_K[l])
            v = point(f"v.{l}", x[:, None] @ self.W_V[l])
            scores = (q @ k.transpose(-1, -2)) * scale  # [batch, head, dest, src]
            scores = point(f"scores.{l}", scores.masked_fill(~mask, float("-inf")))
            pattern = point(f"pattern.{l}", scores.softmax(dim=-1))
            z = point(f"z.{l}", pattern @ v)  # [batch, head, pos, d_head]
            head_out = point(f"head_out.{l}", z @ self.W_O[l])  # [batch, head, pos, d_model]
            resid = point(f"resid_post.{l}", resid + head_out.sum(dim=1))
        if rms:
            resid = resid / point("scale.final", rms_scale(resid))
        logits = point("logits", resid @ self.W_U)
        return logits, cache

    def run_with_cache(
        self, tokens: Tensor, names: Iterable[str] | Callable[[str], bool] | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Forward pass that caches activations (all hook points unless `names` given)."""
        return self.run_with_hooks(
            tokens, cache_names=names if names is not None else lambda _: True
        )

    def extra_repr(self) -> str:
        c = self.cfg
        return (
            f"n_layers={c.n_layers}, n_heads={c.n_heads}, d_model={c.d_model}, "
            f"d_head={c.d_head}, n_ctx={c.n_ctx}, d_vocab={c.d_vocab}, "
            f"positional={c.positional!r}, normalization={c.normalization!r}, "
            f"params={c.n_params:,}"
        )
