"""GPT-2 (`model_type` "gpt2"): learned positions in the stream, pre-LayerNorm, gelu_new MLP,
biases everywhere, W_U tied to W_E (lm_head.weight when tie_word_embeddings is false).

Its Linear layers are Conv1D: weight [in, out], so x @ weight as in qkov (no transpose).
c_attn.weight [d_model, 3 d_model] is [W_Q | W_K | W_V], each split into heads by column
blocks of d_head; c_proj.weight [n_heads d_head, d_model] stacks W_O by rows.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from qkov.config import ModelConfig
from qkov.errors import QkovError
from qkov.hf.folder import activation, field

PREFIX = "transformer."
IGNORED = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers of old checkpoints


def model_config(hf: dict[str, Any], source: str) -> ModelConfig:
    for key, bad in (
        ("scale_attn_by_inverse_layer_idx", True),
        ("scale_attn_weights", False),
        ("add_cross_attention", True),
    ):
        if hf.get(key, not bad) == bad:
            raise QkovError(f"{source}: {key}={bad} is not supported by qkov's GPT-2 reader")
    D = field(hf, "n_embd", source=source)
    return ModelConfig(
        n_layers=field(hf, "n_layer", source=source),
        n_heads=field(hf, "n_head", source=source),
        d_model=D,
        n_ctx=field(hf, "n_positions", source=source),
        d_vocab=field(hf, "vocab_size", source=source),
        positional="standard",
        normalization="layernorm",
        norm_eps=float(field(hf, "layer_norm_epsilon", 1e-5)),
        d_mlp=field(hf, "n_inner", 4 * D),
        act_fn=activation(hf, "activation_function", source),
        bias=True,
    )


def hf_shapes(cfg: ModelConfig, hf: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor the folder must hold (names without the prefix)."""
    D, M, V = cfg.d_model, cfg.d_mlp, cfg.d_vocab
    shapes = {"wte.weight": (V, D), "wpe.weight": (cfg.n_ctx, D)}
    shapes |= {"ln_f.weight": (D,), "ln_f.bias": (D,)}
    if not field(hf, "tie_word_embeddings", True):  # untied: the folder holds its own W_U
        shapes["lm_head.weight"] = (V, D)
    for l in range(cfg.n_layers):
        p = f"h.{l}."
        shapes |= {p + "ln_1.weight": (D,), p + "ln_1.bias": (D,)}
        shapes |= {p + "ln_2.weight": (D,), p + "ln_2.bias": (D,)}
        shapes |= {p + "attn.c_attn.weight": (D, 3 * D), p + "attn.c_attn.bias": (3 * D,)}
        shapes |= {p + "attn.c_proj.weight": (D, D), p + "attn.c_proj.bias": (D,)}
        shapes |= {p + "mlp.c_fc.weight": (D, M), p + "mlp.c_fc.bias": (M,)}
        shapes |= {p + "mlp.c_proj.weight": (M, D), p + "mlp.c_proj.bias": (D,)}
    return shapes


def optional_shapes(cfg: ModelConfig, hf: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Tensors a folder may hold: the (tied) unembedding."""
    return {"lm_head.weight": (cfg.d_vocab, cfg.d_model)}


def convert(t: dict[str, Tensor], cfg: ModelConfig, hf: dict[str, Any]) -> dict[str, Tensor]:
    """The folder's tensors -> qkov's weights (see the module docstring for the layout)."""
    L, H, D, Dh = cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head

    def stack(fmt: str) -> Tensor:
        return torch.stack([t[fmt.format(l)] for l in range(L)])

    qkv = stack("h.{}.attn.c_attn.weight").view(L, D, 3, H, Dh)  # [L, d_model, 3, head, d_head]
    qkv_b = stack("h.{}.attn.c_attn.bias").view(L, 3, H, Dh)
    w = {
        "W_E": t["wte.weight"],
        "W_pos": t["wpe.weight"],
        "W_U": t.get("lm_head.weight", t["wte.weight"]).T,
        "b_U": torch.zeros(cfg.d_vocab, dtype=t["wte.weight"].dtype),
        "ln_final_w": t["ln_f.weight"],
        "ln_final_b": t["ln_f.bias"],
        "W_O": stack("h.{}.attn.c_proj.weight").view(L, H, Dh, D),
        "b_O": stack("h.{}.attn.c_proj.bias"),
        "W_in": stack("h.{}.mlp.c_fc.weight"),
        "b_in": stack("h.{}.mlp.c_fc.bias"),
        "W_out": stack("h.{}.mlp.c_proj.weight"),
        "b_out": stack("h.{}.mlp.c_proj.bias"),
    }
    for i, name in enumerate("QKV"):
        w[f"W_{name}"] = qkv[:, :, i].permute(0, 2, 1, 3)  # [L, head, d_model, d_head]
        w[f"b_{name}"] = qkv_b[:, i]
    for ln, hf_ln in (("ln1", "ln_1"), ("ln2", "ln_2")):
        w[f"{ln}_w"] = stack(f"h.{{}}.{hf_ln}.weight")
        w[f"{ln}_b"] = stack(f"h.{{}}.{hf_ln}.bias")
    return w
