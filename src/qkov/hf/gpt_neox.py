"""GPT-NeoX and Pythia (`model_type` "gpt_neox"): rotary positions on the first
rotary_dim = d_head * partial_rotary_factor dimensions of each head (rotate_half layout),
attention and MLP in parallel (use_parallel_residual), LayerNorm, exact gelu, biases; W_U
(embed_out) is its own matrix.

Linear weights are [out, in], so each is transposed to qkov's x @ W. query_key_value packs
per head: its output [3 d_model] is [n_heads, 3 (q, k, v), d_head].
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from qkov.config import ModelConfig
from qkov.hf.folder import activation, field, rope

PREFIX = "gpt_neox."
IGNORED = (".attention.bias", ".attention.masked_bias", ".rotary_emb.inv_freq")


def model_config(hf: dict[str, Any], source: str) -> ModelConfig:
    D = field(hf, "hidden_size", source=source)
    H = field(hf, "num_attention_heads", source=source)
    theta, fraction, scaling = rope(hf, source, theta=10000.0, fraction=0.25)
    return ModelConfig(
        n_layers=field(hf, "num_hidden_layers", source=source),
        n_heads=H,
        d_model=D,
        n_ctx=field(hf, "max_position_embeddings", source=source),
        d_vocab=field(hf, "vocab_size", source=source),
        positional="rotary",
        rotary_dim=int(D // H * fraction),
        rotary_base=theta,
        rotary_scaling=scaling,
        parallel=bool(field(hf, "use_parallel_residual", True)),
        normalization="layernorm",
        norm_eps=float(field(hf, "layer_norm_eps", 1e-5)),
        d_mlp=field(hf, "intermediate_size", source=source),
        act_fn=activation(hf, "hidden_act", source),
        bias=True,  # the MLP always has biases; attention's are zero without attention_bias
    )


def hf_shapes(cfg: ModelConfig, hf: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    D, M, V = cfg.d_model, cfg.d_mlp, cfg.d_vocab
    shapes = {"embed_in.weight": (V, D), "final_layer_norm.weight": (D,)}
    shapes["final_layer_norm.bias"] = (D,)
    attn_bias = field(hf, "attention_bias", True)
    for l in range(cfg.n_layers):
        p = f"layers.{l}."
        for ln in ("input_layernorm", "post_attention_layernorm"):
            shapes |= {p + f"{ln}.weight": (D,), p + f"{ln}.bias": (D,)}
        shapes[p + "attention.query_key_value.weight"] = (3 * D, D)
        shapes[p + "attention.dense.weight"] = (D, D)
        if attn_bias:
            shapes[p + "attention.query_key_value.bias"] = (3 * D,)
            shapes[p + "attention.dense.bias"] = (D,)
        shapes |= {p + "mlp.dense_h_to_4h.weight": (M, D), p + "mlp.dense_h_to_4h.bias": (M,)}
        shapes |= {p + "mlp.dense_4h_to_h.weight": (D, M), p + "mlp.dense_4h_to_h.bias": (D,)}
    if not field(hf, "tie_word_embeddings", False):
        shapes["embed_out.weight"] = (V, D)
    return shapes


def optional_shapes(cfg: ModelConfig, hf: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    return {"embed_out.weight": (cfg.d_vocab, cfg.d_model)}


def convert(t: dict[str, Tensor], cfg: ModelConfig, hf: dict[str, Any]) -> dict[str, Tensor]:
    L, H, D, Dh = cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head
    dtype = t["embed_in.weight"].dtype

    def stack(fmt: str) -> Tensor:
        return torch.stack([t[fmt.format(l)] for l in range(L)])

    def stack_or_zeros(fmt: str, shape: tuple[int, ...]) -> Tensor:
        if fmt.format(0) in t:
            return stack(fmt)
        return torch.zeros(L, *shape, dtype=dtype)

    qkv = stack("layers.{}.attention.query_key_value.weight").view(L, H, 3, Dh, D)
    qkv_b = stack_or_zeros("layers.{}.attention.query_key_value.bias", (3 * D,)).view(L, H, 3, Dh)
    dense = stack("layers.{}.attention.dense.weight")  # [L, d_model, n_heads d_head]
    w = {
        "W_E": t["embed_in.weight"],
        "W_U": t.get("embed_out.weight", t["embed_in.weight"]).T,
        "b_U": torch.zeros(cfg.d_vocab, dtype=dtype),
        "ln_final_w": t["final_layer_norm.weight"],
        "ln_final_b": t["final_layer_norm.bias"],
        "W_O": dense.transpose(1, 2).reshape(L, H, Dh, D),
        "b_O": stack_or_zeros("layers.{}.attention.dense.bias", (D,)),
        "W_in": stack("layers.{}.mlp.dense_h_to_4h.weight").transpose(1, 2),
        "b_in": stack("layers.{}.mlp.dense_h_to_4h.bias"),
        "W_out": stack("layers.{}.mlp.dense_4h_to_h.weight").transpose(1, 2),
        "b_out": stack("layers.{}.mlp.dense_4h_to_h.bias"),
    }
    for i, name in enumerate("QKV"):
        w[f"W_{name}"] = qkv[:, :, i].transpose(-1, -2)  # [L, head, d_model, d_head]
        w[f"b_{name}"] = qkv_b[:, :, i]
    for ln, hf_ln in (("ln1", "input_layernorm"), ("ln2", "post_attention_layernorm")):
        w[f"{ln}_w"] = stack(f"layers.{{}}.{hf_ln}.weight")
        w[f"{ln}_b"] = stack(f"layers.{{}}.{hf_ln}.bias")
    return w
