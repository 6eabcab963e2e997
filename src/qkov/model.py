"""Transformer: a decoder transformer whose weights are the paper's matrices; the default
config is the paper's attention-only model (AttnOnlyTransformer is the same class).

Row-vector convention throughout (x @ W, as in code; the paper writes the transposes):

    W_E  [d_vocab, d_model]                 token embedding
    W_pos [n_ctx, d_model]                  positional embedding
    W_Q, W_K, W_V [n_layers, n_heads, d_model, d_head]
                                            (W_K, W_V: n_kv_heads instead of n_heads)
    W_O  [n_layers, n_heads, d_head, d_model]
    W_in [n_layers, d_model, d_mlp]         MLP input (d_mlp > 0)
    W_gate [n_layers, d_model, d_mlp]       MLP gate (gated_mlp)
    W_out [n_layers, d_mlp, d_model]        MLP output (d_mlp > 0)
    W_U  [d_model, d_vocab]                 unembedding
    b_Q, b_K, b_V [n_layers, n_heads, d_head]; b_O [n_layers, d_model]; b_U [d_vocab];
    b_in [n_layers, d_mlp]; b_out [n_layers, d_model]          (bias=True only)
    ln1_w, ln1_b, ln2_w, ln2_b [n_layers, d_model]; ln_final_w, ln_final_b [d_model]
                                            (layernorm: w and b; rmsnorm: w; ln2 with an MLP)

Each layer (pre-norm, as GPT-2 and TransformerLens):

    resid_mid  = resid_pre + sum_h attn_h(norm1(resid_pre)) + b_O
    resid_post = resid_mid + act(norm2(resid_mid) W_in + b_in) W_out + b_out   (d_mlp > 0)
    logits     = norm_final(resid_post of the last layer) W_U + b_U

With parallel=True (GPT-NeoX) the MLP reads norm2(resid_pre) instead of norm2(resid_mid);
with gated_mlp (Llama) act(x W_in + b_in) becomes act(x W_gate) * (x W_in + b_in). With
n_kv_heads < n_heads, query head h reads key/value head h // (n_heads / n_kv_heads);
`fold.fold_layernorm` (what the analyses read) gives every head its own W_K, W_V copy.
positional="rotary" has no W_pos: queries and keys are rotated (qkov.rotary) after their
hook points q.{l}, k.{l}, and rot_q.{l}, rot_k.{l} hold the rotated ones.

Attention scores are scaled by 1/sqrt(d_head) with a causal mask. With
positional="shortformer" W_pos enters only the inputs of queries and keys (after the norm,
as in TransformerLens). normalization="rms" divides by the per-position RMS with no learned
weights; "layernorm" and "rmsnorm" are TransformerLens's LN and RMS (eps 1e-5).

Hook points (the names `run_with_cache` and `run_with_hooks` take) are listed in
qkov.hook_points.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qkov.attention import causal_attention, causal_attention_packed
from qkov.config import ModelConfig
from qkov.errors import QkovError
from qkov.hook_points import Hook, Point, hook_names, scale_name
from qkov.loss import target_logit_margin, unembed_cross_entropy
from qkov.rotary import rotary_cos_sin, rotate
from qkov.weights import WEIGHT_NAMES as WEIGHT_NAMES  # re-exported: old import path
from qkov.weights import check_weight_shapes, weight_shapes
from qkov.weights import is_attention_only as is_attention_only  # re-exported

RMS_EPS = 1e-5  # also the eps of layernorm and rmsnorm (TransformerLens's default)
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),  # GPT-2's tanh approximation
    "relu": F.relu,
    "silu": F.silu,
}


def rms_scale(resid: Tensor, eps: float = RMS_EPS) -> Tensor:
    """[..., d_model] -> [..., 1]: the divisor of normalization="rms", sqrt(mean(x^2) + eps)."""
    return (resid.pow(2).mean(-1, keepdim=True) + eps).sqrt()


def per_query_head(x: Tensor, n_heads: int) -> Tensor:
    """Key/value weights [n_kv_heads, ...] -> [n_heads, ...]: query head h reads kv head
    h // (n_heads / n_kv_heads) (grouped-query attention; a no-op without it)."""
    return x if x.shape[0] == n_heads else x.repeat_interleave(n_heads // x.shape[0], dim=0)


def _project(x: Tensor, W: Tensor) -> Tensor:
    """x [batch, pos, d_model] through each head's W [n, d_model, d_head]: [batch, n, pos,
    d_head], as one [batch pos, d_model] x [d_model, n d_head] matmul (broadcasting x over the
    heads runs batch x n small matmuls: slower than the whole MLP at TinyLlama's shape)."""
    n, d_model, d_head = W.shape
    out = x @ W.transpose(0, 1).reshape(d_model, n * d_head)  # [batch, pos, n d_head]
    return out.unflatten(-1, (n, d_head)).transpose(-3, -2)


def _per_query_head_axis(x: Tensor, n_heads: int) -> Tensor:
    """[batch, n_kv_heads, pos, d_head] -> [batch, n_heads, pos, d_head] (`per_query_head`
    on the head axis of activations)."""
    return x if x.shape[1] == n_heads else x.repeat_interleave(n_heads // x.shape[1], dim=1)


class _Stopped(Exception):
    """Ends `Transformer.run_with_hooks` at its `stop` hook point."""


class Transformer(nn.Module):
    """Decoder transformer; weights are nn.Parameters named as in the paper."""

    def __init__(
        self,
        cfg: ModelConfig,
        *,
        init: bool = True,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        """init=False allocates the weights without drawing them (see `empty`)."""
        super().__init__()
        self.cfg = cfg
        self.tokenizer = None  # a tokenizers.Tokenizer when loaded from a checkpoint dir
        self.token_counts: Tensor | None = None  # [d_vocab] train-split counts (token_counts.json)
        L = cfg.n_layers
        g = torch.Generator().manual_seed(cfg.seed)
        # Scale the writes to the residual stream down with depth (GPT-2 style).
        write_std = cfg.init_std / math.sqrt(2 * max(L, 1))
        std = {"W_pos": cfg.pos_init_std or cfg.init_std, "W_O": write_std, "W_out": write_std}
        # Matrices draw from one generator in weight_shapes' order (the attention-only ones
        # first, so their values do not depend on the rest); biases start at 0, norm weights 1.
        for name, shape in weight_shapes(cfg).items():
            if not init:
                value = torch.empty(shape, device=device, dtype=dtype)
            elif name.startswith("W_"):
                value = torch.randn(*shape, generator=g) * std.get(name, cfg.init_std)
            else:
                value = torch.ones(shape) if name.endswith("_w") else torch.zeros(shape)
            setattr(self, name, nn.Parameter(value.to(device=device, dtype=dtype)))
        if cfg.positional == "none":
            self.W_pos.data.zero_()
            self.W_pos.requires_grad_(False)
        if cfg.positional == "rotary":
            self.W_pos = None  # a rotary model has none; positions rotate q and k

    # ------------------------------------------------------------------ weights
    @classmethod
    def empty(
        cls, cfg: ModelConfig, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
    ) -> Transformer:
        """A model whose weights are allocated but not initialised (no random draws): for
        loaders and the fold, which then write every weight (`load_weights`). Each weight is
        allocated once, on `device` in `dtype` (float32 by default)."""
        return cls(cfg, init=False, device=device, dtype=dtype or torch.float32)

    @classmethod
    def from_weights(cls, cfg: ModelConfig, weights: dict[str, Tensor]) -> Transformer:
        """Build a model from a dict of the paper's matrices (missing W_pos ok if unused)."""
        model = cls(cfg)
        model.load_weights(weights)
        return model

    def load_weights(self, weights: dict[str, Tensor], source: str = "weights") -> None:
        expected = list(weight_shapes(self.cfg))
        c = self.cfg
        unknown = sorted(set(weights) - set(expected))
        if unknown:
            raise QkovError(
                f"{source} has tensors {unknown} that a model with d_mlp={c.d_mlp}, "
                f"bias={c.bias}, normalization={c.normalization!r} does not have: does "
                f"config.json match the weights? (expected {expected})"
            )
        required = [n for n in expected if not (n == "W_pos" and c.positional == "none")]
        missing = [n for n in required if n not in weights]
        if missing:
            raise QkovError(
                f"{source} is missing {missing}, which a model with d_mlp={c.d_mlp}, "
                f"bias={c.bias}, normalization={c.normalization!r} needs: was it saved by "
                "qkov with this config.json?"
            )
        check_weight_shapes(self.cfg, weights, source)
        with torch.no_grad():
            for name, value in weights.items():
                param: nn.Parameter = getattr(self, name)
                if not torch.is_floating_point(value):
                    raise QkovError(f"{source}: {name} has dtype {value.dtype}, expected float")
                param.copy_(value)  # cast to the model's dtype as it is copied
            if self.cfg.positional == "none":
                self.W_pos.zero_()

    def weights(self) -> dict[str, Tensor]:
        """Exactly the tensors this config has, by name (detached views, same storage)."""
        return {name: getattr(self, name).detach() for name in weight_shapes(self.cfg)}

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
        V = self.cfg.d_vocab
        if tokens.device.type != "cpu":
            # On an accelerator a host-side check would stop the host every step (a sync):
            # the check is queued on the device instead, and a bad id stops the run there.
            ok = ((tokens >= 0) & (tokens < V)).all()
            torch._assert_async(ok, f"a token id is out of range [0, {V})")
            return tokens.long().to(self.device)
        lo, hi = (int(t) for t in torch.aminmax(tokens))
        if lo < 0 or hi >= V:
            raise QkovError(
                f"token id {hi if hi >= V else lo} is out of range "
                f"[0, {V}): was the text encoded with this model's tokenizer?"
            )
        return tokens.long().to(self.device)

    def _param(self, name: str, l: int | None = None) -> Tensor | None:
        """Weight `name` (of layer l), or None where the config has none (a bias, a norm)."""
        p = getattr(self, name, None)
        return p if p is None or l is None else p[l]

    def _norm(
        self, x: Tensor, where: str, l: int | None = None, point: Point | None = None
    ) -> Tensor:
        """Norm `where` (ln1, ln2 or ln_final) of layer l applied to x [..., d_model]: centre
        (layernorm), divide by the RMS (its divisor is a hook point), then the learned weight
        and bias (layernorm, rmsnorm). The identity without normalization."""
        kind = self.cfg.normalization
        if kind == "none":
            return x
        if kind == "layernorm":
            x = x - x.mean(-1, keepdim=True)
        scale = rms_scale(x, self.cfg.norm_eps)
        x = x / (point(scale_name(self.cfg, where, l), scale) if point else scale)
        w, b = self._param(f"{where}_w", l), self._param(f"{where}_b", l)
        x = x * w if w is not None else x
        return x + b if b is not None else x

    def _mlp(self, x: Tensor, l: int, point: Point | None = None) -> Tensor:
        """act(x W_in + b_in) W_out + b_out for layer l: [batch, pos, d_model] -> same."""
        b_in, b_out = self._param("b_in", l), self._param("b_out", l)
        point = point or (lambda _, t: t)
        pre = x @ self.W_in[l]  # [batch, pos, d_mlp]
        pre = pre + b_in if b_in is not None else pre
        act = ACTIVATIONS[self.cfg.act_fn]
        if self.cfg.gated_mlp:  # act(x W_gate) * (x W_in + b_in)
            gate = point(f"mlp_pre.{l}", x @ self.W_gate[l])
            post = point(f"mlp_post.{l}", act(gate) * pre)
        else:
            post = point(f"mlp_post.{l}", act(point(f"mlp_pre.{l}", pre)))
        out = post @ self.W_out[l]  # [batch, pos, d_model]
        return point(f"mlp_out.{l}", out + b_out if b_out is not None else out)

    def unembed(self, resid: Tensor) -> Tensor:
        """The final (normalised) stream [..., d_model] -> logits [..., d_vocab]."""
        b_U = self._param("b_U")
        return resid @ self.W_U + b_U if b_U is not None else resid @ self.W_U

    def forward(
        self, tokens: Tensor, targets: Tensor | None = None, label_smoothing: float = 0.0
    ) -> Tensor:
        """tokens [batch, pos] -> logits [batch, pos, d_vocab] (fast path, SDPA); with
        targets [batch, pos], the mean next-token cross-entropy instead, fused with the
        unembedding (qkov.loss: the logits are never materialised). label_smoothing ε
        (training's --label-smoothing): the loss against targets (1 - ε) onehot + ε /
        d_vocab instead, and the plain cross-entropy of the same pass is kept in
        `self.last_cross_entropy` (what training logs as its train loss)."""
        resid = self.resid_final(tokens)
        if targets is None:
            return self.unembed(resid)
        targets = self.check_tokens(targets)
        if targets.shape != resid.shape[:-1]:
            raise QkovError(
                f"targets have shape {list(targets.shape)} but tokens {list(resid.shape[:-1])}: "
                "pass one target id per input token"
            )
        if not 0.0 <= label_smoothing < 1.0:  # also refuses NaN
            raise QkovError(f"label smoothing must be in [0, 1), got {label_smoothing}")
        b_U = self._param("b_U")
        loss = unembed_cross_entropy(resid, self.W_U, targets, b_U=b_U)
        if not label_smoothing:
            return loss
        self.last_cross_entropy = loss.detach()
        return loss + label_smoothing * target_logit_margin(resid, self.W_U, targets, b_U)

    def _stacked_qkv(self) -> tuple[Tensor, Tensor | None]:
        """W_Q, W_K and W_V of every layer side by side, as one matmul reads them:
        [n_layers, d_model, 3 * n_heads * d_head] (column = (Q/K/V, head, d_head)), and the
        biases [n_layers, 3 * n_heads * d_head] (None without). One copy per forward pass
        for all layers (the public weights are per head); gradients flow back through it."""
        L, D, H = self.cfg.n_layers, self.cfg.d_model, self.cfg.n_heads
        HDh = H * self.cfg.d_head

        def per_head(w: Tensor) -> Tensor:  # grouped-query K/V: [L, n_kv, ...] -> [L, H, ...]
            return w if w.shape[1] == H else w.repeat_interleave(H // w.shape[1], dim=1)

        # [L, head, D, d_head] -> [L, D, head, d_head]: cat writes each into place
        qkv = (self.W_Q, per_head(self.W_K), per_head(self.W_V))
        W = torch.cat([w.transpose(1, 2) for w in qkv], dim=2)
        if not self.cfg.bias:
            return W.view(L, D, 3 * HDh), None
        b = torch.cat([self.b_Q, per_head(self.b_K), per_head(self.b_V)], dim=1).view(L, 3 * HDh)
        return W.view(L, D, 3 * HDh), b

    def resid_final(self, tokens: Tensor) -> Tensor:
        """tokens [batch, pos] -> the final residual stream [batch, pos, d_model] (SDPA), as
        the unembedding reads it (after the final norm, if any)."""
        tokens = self.check_tokens(tokens)
        cfg = self.cfg
        B, n = tokens.shape
        H, Dh = cfg.n_heads, cfg.d_head
        resid = F.embedding(tokens, self.W_E)  # W_E[tokens], with a cheaper backward
        pos = self.W_pos[:n] if self.W_pos is not None else None
        if cfg.positional == "standard":
            resid = resid + pos
        rot = self._rotary(n)
        W_QKV, b_QKV = self._stacked_qkv()
        for l in range(cfg.n_layers):
            resid_pre = resid
            x = self._norm(resid, "ln1", l)
            W, b = W_QKV[l], None if b_QKV is None else b_QKV[l]  # [D, 3 H Dh], [3 H Dh]
            if cfg.positional == "shortformer":  # queries and keys read x + pos, values x
                qkv, v = (x + pos) @ W[:, : 2 * H * Dh], x @ W[:, 2 * H * Dh :]
                if b is not None:
                    qkv, v = qkv + b[: 2 * H * Dh], v + b[2 * H * Dh :]
            else:  # one matmul for all heads' queries, keys and values: [batch, pos, 3 H Dh]
                qkv, v = (x @ W if b is None else x @ W + b), None
            if rot is None:  # the heads packed as the matmuls made them, z [batch, pos, H Dh]
                z = causal_attention_packed(qkv, H, v)  # qkov's CPU kernel, or SDPA
            else:  # [batch, pos, 3, head, d_head] -> three [batch, head, pos, d_head] views
                q, k, v = qkv.view(B, n, 3, H, Dh).permute(2, 0, 3, 1, 4)
                z = causal_attention(rotate(q, *rot), rotate(k, *rot), v)
                z = z.transpose(1, 2).reshape(B, n, H * Dh)
            # W_O[l] [head, d_head, d_model] is contiguous: the reshape is a view, not a copy
            resid = resid + z @ self.W_O[l].reshape(H * Dh, -1)
            if cfg.bias:
                resid = resid + self.b_O[l]
            if cfg.d_mlp:
                x = self._norm(resid_pre if cfg.parallel else resid, "ln2", l)
                resid = resid + self._mlp(x, l)
        return self._norm(resid, "ln_final")

    def _rotary(self, n: int) -> tuple[Tensor, Tensor] | None:
        """cos, sin [n, rotary_dim] of positions 0..n-1 for positional="rotary", else None."""
        c = self.cfg
        if c.positional != "rotary":
            return None
        return rotary_cos_sin(c, n, self.device)

    def run_with_hooks(
        self,
        tokens: Tensor,
        hooks: dict[str, Hook] | None = None,
        cache_names: Iterable[str] | Callable[[str], bool] | None = None,
        start: tuple[int, Tensor] | None = None,
        stop: str | None = None,
    ) -> tuple[Tensor | None, dict[str, Tensor]]:
        """Explicit forward pass: apply `hooks` by name and cache the named activations.

        cache_names: None caches nothing, a collection of names, or a predicate on names.
        start: (layer, resid_pre [batch, pos, d_model]) begins the pass at that layer with
        that stream (taken from a cache of the same tokens): the layers before it and their
        hook points (pos_embed too) are skipped. stop: a hook name; the pass ends once that
        point is computed (and cached if wanted), and the layers after it and the
        unembedding are skipped: logits are then None. Returns (logits, cache)."""
        tokens = self.check_tokens(tokens)
        hooks = dict(hooks or {})
        known = set(hook_names(self.cfg))
        bad = sorted(set(hooks) - known)
        if bad:
            raise QkovError(f"unknown hook names {bad}: see qkov.model.hook_names(cfg)")
        if stop is not None and stop not in known:
            raise QkovError(
                f"unknown hook name {stop!r} to stop at: see qkov.model.hook_names(cfg)"
            )
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
            if name == stop:
                raise _Stopped
            return x

        def visited(name: str) -> bool:  # an optional point (its tensor costs memory)
            return name in hooks or want(name) or name == stop

        try:
            return self._pass(tokens, start, point, visited), cache
        except _Stopped:
            return None, cache

    def _pass(
        self,
        tokens: Tensor,
        start: tuple[int, Tensor] | None,
        point: Callable[[str, Tensor], Tensor],
        visited: Callable[[str], bool],
    ) -> Tensor:
        """run_with_hooks' forward pass through its hook `point`s: tokens [batch, pos] ->
        logits [batch, pos, d_vocab]. visited(name): whether an optional point (scores,
        pattern, head_out: big tensors a fused path avoids) is computed."""
        cfg = self.cfg
        n = tokens.shape[1]
        first = 0 if start is None else start[0]
        pos = self.W_pos[:n] if self.W_pos is not None else None
        if start is None:
            resid = point("embed", self.W_E[tokens])
            pos = point("pos_embed", pos) if pos is not None else None
            if cfg.positional == "standard":
                resid = resid + pos
        elif not 0 <= first < cfg.n_layers or start[1].shape != (*tokens.shape, cfg.d_model):
            raise QkovError(
                f"start: layer {first} of {cfg.n_layers} with a stream of shape "
                f"{list(start[1].shape)}; expected [{', '.join(map(str, tokens.shape))}, "
                f"{cfg.d_model}] from a layer of this model"
            )
        else:
            resid = start[1]
        rot = self._rotary(n)
        mask = torch.ones(n, n, dtype=torch.bool, device=self.device).tril()
        scale = 1.0 / math.sqrt(cfg.d_head)
        for l in range(first, cfg.n_layers):
            resid = resid_pre = point(f"resid_pre.{l}", resid)
            x = self._norm(resid, "ln1", l, point)
            qk_in = x + pos if cfg.positional == "shortformer" else x
            # [batch, head, pos, d_head]; keys and values of the n_kv_heads, then one copy per
            # query head (grouped-query attention); biases [head, 1, d_head]
            q, k, v = (
                _project(qk_in, self.W_Q[l]),
                _project(qk_in, self.W_K[l]),
                _project(x, self.W_V[l]),
            )
            if cfg.bias:
                q, k, v = (
                    q + self.b_Q[l, :, None],
                    k + self.b_K[l, :, None],
                    v + self.b_V[l, :, None],
                )
            k, v = _per_query_head_axis(k, cfg.n_heads), _per_query_head_axis(v, cfg.n_heads)
            q = point(f"q.{l}", q)  # [batch, head, pos, d_head]
            k = point(f"k.{l}", k)
            v = point(f"v.{l}", v)
            if rot is not None:
                q = point(f"rot_q.{l}", rotate(q, *rot))
                k = point(f"rot_k.{l}", rotate(k, *rot))
            if visited(f"scores.{l}") or visited(f"pattern.{l}"):
                scores = (q @ k.transpose(-1, -2)) * scale  # [batch, head, dest, src]
                scores = point(f"scores.{l}", scores.masked_fill(~mask, float("-inf")))
                pattern = point(f"pattern.{l}", scores.softmax(dim=-1))
                z = pattern @ v
            else:  # the same z without the [batch, head, dest, src] tensors
                z = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
            z = point(f"z.{l}", z)  # [batch, head, pos, d_head]
            if visited(f"head_out.{l}"):
                head_out = point(f"head_out.{l}", z @ self.W_O[l])  # [batch, head, pos, d_model]
                resid = resid + head_out.sum(dim=1)
            else:  # the same sum in one matmul: no [batch, head, pos, d_model] tensor
                b, H, p, dh = z.shape
                resid = resid + z.transpose(1, 2).reshape(b, p, H * dh) @ self.W_O[l].reshape(
                    H * dh, -1
                )
            if cfg.bias:
                resid = resid + self.b_O[l]
            if cfg.d_mlp:
                resid = point(f"resid_mid.{l}", resid)
                mlp_in = resid_pre if cfg.parallel else resid
                resid = resid + self._mlp(self._norm(mlp_in, "ln2", l, point), l, point)
            resid = point(f"resid_post.{l}", resid)
        return point("logits", self.unembed(self._norm(resid, "ln_final", None, point)))

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
            + (f"d_mlp={c.d_mlp}, act_fn={c.act_fn!r}, " if c.d_mlp else "")
            + ("bias=True, " if c.bias else "")
            + (f"n_kv_heads={c.n_kv_heads}, " if c.n_kv_heads != c.n_heads else "")
            + ("parallel=True, " if c.parallel else "")
            + ("gated_mlp=True, " if c.gated_mlp else "")
            + f"params={c.n_params:,}"
        )


AttnOnlyTransformer = Transformer  # the name before MLPs and norms: old code keeps working
