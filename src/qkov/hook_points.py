"""Hook points: the name of every activation a forward pass exposes, so that
`Transformer.run_with_cache` and `run_with_hooks` can cache or edit it by name.

The names, in forward order (`hook_names(cfg)` lists those a config has):

    embed              [batch, pos, d_model]   W_E[tokens]
    pos_embed          [pos, d_model]          W_pos[:pos] (not with rotary)
    resid_pre.{l}      [batch, pos, d_model]   residual stream entering layer l
    scale.{l}          [batch, pos, 1]         its RMS (normalization="rms")
    ln1_scale.{l}      [batch, pos, 1]         its norm's divisor (layernorm, rmsnorm)
    q.{l} k.{l} v.{l}  [batch, head, pos, d_head]   (k, v per query head with n_kv_heads)
    rot_q.{l} rot_k.{l} [batch, head, pos, d_head]  rotated queries and keys (rotary)
    scores.{l}         [batch, head, dest, src] scaled, masked attention scores
    pattern.{l}        [batch, head, dest, src] attention pattern (softmax of scores)
    z.{l}              [batch, head, pos, d_head] pattern-weighted values
    head_out.{l}       [batch, head, pos, d_model] each head's output written to the stream
    resid_mid.{l}      [batch, pos, d_model]   after attention (d_mlp > 0)
    ln2_scale.{l}      [batch, pos, 1]         the MLP input's norm divisor (d_mlp > 0, a norm)
    mlp_pre.{l} mlp_post.{l} [batch, pos, d_mlp]  before / after the activation
                                            (gated: the gate's input; act(gate) * (x W_in + b_in))
    mlp_out.{l}        [batch, pos, d_model]   the MLP's output written to the stream
    resid_post.{l}     [batch, pos, d_model]   residual stream leaving layer l
    scale.final        [batch, pos, 1]         RMS of the final stream (normalization="rms")
    ln_final_scale     [batch, pos, 1]         the final norm's divisor (layernorm, rmsnorm)
    logits             [batch, pos, d_vocab]

A hook is `fn(tensor, name) -> tensor | None`; returning a tensor replaces the activation.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from qkov.config import ModelConfig

Hook = Callable[[Tensor, str], Tensor | None]
Point = Callable[[str, Tensor], Tensor]  # run_with_hooks's hook point: (name, x) -> x


def scale_name(cfg: ModelConfig, where: str, l: int | None = None) -> str:
    """The hook name of a norm's divisor; where: "ln1", "ln2" or "ln_final"."""
    if cfg.normalization == "rms" and where != "ln2":  # today's names
        return "scale.final" if where == "ln_final" else f"scale.{l}"
    return f"{where}_scale" if where == "ln_final" else f"{where}_scale.{l}"


def hook_names(cfg: ModelConfig) -> list[str]:
    """Every hook point name of a model with this config, in forward order."""
    names = ["embed"] + ([] if cfg.positional == "rotary" else ["pos_embed"])
    norm = cfg.normalization != "none"
    for l in range(cfg.n_layers):
        names += [f"resid_pre.{l}"] + ([scale_name(cfg, "ln1", l)] if norm else [])
        names += [f"{n}.{l}" for n in ("q", "k", "v")]
        names += [f"rot_{n}.{l}" for n in ("q", "k")] if cfg.positional == "rotary" else []
        names += [f"{n}.{l}" for n in ("scores", "pattern", "z", "head_out")]
        if cfg.d_mlp:
            names += [f"resid_mid.{l}"] + ([scale_name(cfg, "ln2", l)] if norm else [])
            names += [f"{n}.{l}" for n in ("mlp_pre", "mlp_post", "mlp_out")]
        names.append(f"resid_post.{l}")
    return names + ([scale_name(cfg, "ln_final")] if norm else []) + ["logits"]
