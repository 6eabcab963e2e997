"""The Llama family (`model_type` "llama", "mistral", "qwen2"): rotary positions on every
dimension of each head (rotate_half layout), grouped-query attention, RMSNorm with weights,
gated SiLU MLP (down(act(gate(x)) * up(x))), no biases except Qwen2's on q, k, v (and
Llama's attention_bias). Mistral's and Qwen2's sliding window caps n_ctx: up to the window
it is plain causal attention.

Linear weights are [out, in], so each is transposed to qkov's x @ W; q_proj's output
[n_heads d_head] and k_proj's, v_proj's [n_kv_heads d_head] stack heads in order.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from qkov.config import ModelConfig
from qkov.errors import QkovError
from qkov.hf.folder import activation, field, rope

PREFIX = "model."
IGNORED = (".rotary_emb.inv_freq",)


def _biases(hf: dict[str, Any]) -> tuple[bool, bool]:
    """(q/k/v biases, o bias) of this family member."""
    if hf.get("model_type") == "qwen2":
        return True, False
    attn = bool(hf.get("attention_bias", False))
    return attn, attn


def model_config(hf: dict[str, Any], source: str) -> ModelConfig:
    if hf.get("mlp_bias"):
        raise QkovError(f"{source}: mlp_bias=true is not supported (qkov's gate has no bias)")
    D = field(hf, "hidden_size", source=source)
    H = field(hf, "num_attention_heads", source=source)
    d_head = field(hf, "head_dim", D // H)
    theta, fraction, scaling = rope(hf, source, theta=10000.0, fraction=1.0)
    n_ctx = field(hf, "max_position_embeddings", source=source)
    window = hf.get("sliding_window")
    if window and hf.get("use_sliding_window", hf.get("model_type") == "mistral"):
        n_ctx = min(n_ctx, window)
    return ModelConfig(
        n_layers=field(hf, "num_hidden_layers", source=source),
        n_heads=H,
        n_kv_heads=field(hf, "num_key_value_heads", H),
        d_model=D,
        d_head=d_head,
        n_ctx=n_ctx,
        d_vocab=field(hf, "vocab_size", source=source),
        positional="rotary",
        rotary_dim=int(d_head * fraction),
        rotary_base=theta,
        rotary_scaling=scaling,
        normalization="rmsnorm",
        norm_eps=float(field(hf, "rms_norm_eps", 1e-6)),
        d_mlp=field(hf, "intermediate_size", source=source),
        act_fn=activation(hf, "hidden_act", source),
        gated_mlp=True,
        bias=any(_biases(hf)),
    )


def hf_shapes(cfg: ModelConfig, hf: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    D, M, V, Dh = cfg.d_model, cfg.d_mlp, cfg.d_vocab, cfg.d_head
    q, kv = cfg.n_heads * Dh, cfg.n_kv_heads * Dh
    qkv_bias, o_bias = _biases(hf)
    shapes = {"embed_tokens.weight": (V, D), "norm.weight": (D,)}
    for l in range(cfg.n_layers):
        p = f"layers.{l}."
        shapes |= {p + "input_layernorm.weight": (D,), p + "post_attention_layernorm.weight": (D,)}
        a = p + "self_attn."
        shapes |= {a + "q_proj.weight": (q, D), a + "k_proj.weight": (kv, D)}
        shapes |= {a + "v_proj.weight": (kv, D), a + "o_proj.weight": (D, q)}
        if qkv_bias:
            shapes |= {a + "q_proj.bias": (q,), a + "k_proj.bias": (kv,), a + "v_proj.bias": (kv,)}
        if o_bias:
            shapes[a + "o_proj.bias"] = (D,)
        m = p + "mlp."
        shapes |= {m + "gate_proj.weight": (M, D), m + "up_proj.weight": (M, D)}
        shapes[m + "down_proj.weight"] = (D, M)
    if not field(hf, "tie_word_embeddings", False):
        shapes["lm_head.weight"] = (V, D)
    return shapes


def optional_shapes(cfg: ModelConfig, hf: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    return {"lm_head.weight": (cfg.d_vocab, cfg.d_model)}


def convert(t: dict[str, Tensor], cfg: ModelConfig, hf: dict[str, Any]) -> dict[str, Tensor]:
    L, H, KV, D, Dh, M = (
        cfg.n_layers,
        cfg.n_heads,
        cfg.n_kv_heads,
        cfg.d_model,
        cfg.d_head,
        cfg.d_mlp,
    )
    dtype = t["embed_tokens.weight"].dtype

    def stack(fmt: str) -> Tensor:
        return torch.stack([t[fmt.format(l)] for l in range(L)])

    def heads(proj: str, n: int) -> Tensor:
        """[L, n d_head, d_model] -> [L, n, d_model, d_head]."""
        return stack(f"layers.{{}}.self_attn.{proj}.weight").view(L, n, Dh, D).transpose(-1, -2)

    w = {
        "W_E": t["embed_tokens.weight"],
        "W_U": t.get("lm_head.weight", t["embed_tokens.weight"]).T,
        "ln_final_w": t["norm.weight"],
        "W_Q": heads("q_proj", H),
        "W_K": heads("k_proj", KV),
        "W_V": heads("v_proj", KV),
        "W_O": stack("layers.{}.self_attn.o_proj.weight").transpose(1, 2).reshape(L, H, Dh, D),
        "W_gate": stack("layers.{}.mlp.gate_proj.weight").transpose(1, 2),
        "W_in": stack("layers.{}.mlp.up_proj.weight").transpose(1, 2),
        "W_out": stack("layers.{}.mlp.down_proj.weight").transpose(1, 2),
        "ln1_w": stack("layers.{}.input_layernorm.weight"),
        "ln2_w": stack("layers.{}.post_attention_layernorm.weight"),
    }
    if cfg.bias:
        qkv_bias, o_bias = _biases(hf)
        zeros = lambda *shape: torch.zeros(*shape, dtype=dtype)  # noqa: E731
        for name, n in (("q", H), ("k", KV), ("v", KV)):
            fmt = f"layers.{{}}.self_attn.{name}_proj.bias"
            w[f"b_{name.upper()}"] = stack(fmt).view(L, n, Dh) if qkv_bias else zeros(L, n, Dh)
        w["b_O"] = stack("layers.{}.self_attn.o_proj.bias") if o_bias else zeros(L, D)
        w |= {"b_in": zeros(L, M), "b_out": zeros(L, D), "b_U": zeros(cfg.d_vocab)}
    return w
