"""TransformerLens's checkpoint format: the lazy import, the config check, the key table.

TL stores the paper's matrices in qkov's layout, one tensor per layer; `TL_KEYS` maps each
qkov weight to its TL key ({l}: the layer):

    embed.W_E [d_vocab, d_model]   pos_embed.W_pos [n_ctx, d_model]   unembed.W_U [d_model, d_vocab]
    blocks.{l}.attn.W_Q, W_K, W_V [n_heads, d_model, d_head]   W_O [n_heads, d_head, d_model]
    blocks.{l}.attn.b_Q, b_K, b_V [n_heads, d_head]   b_O [d_model]   unembed.b_U [d_vocab]
    blocks.{l}.mlp.W_in [d_model, d_mlp]  b_in [d_mlp]  W_out [d_mlp, d_model]  b_out [d_model]
    blocks.{l}.mlp.W_gate [d_model, d_mlp] (gated_mlp)
    blocks.{l}.ln1.w, .b; blocks.{l}.ln2.w, .b; ln_final.w, .b [d_model]

With grouped-query attention (n_key_value_heads) W_K, W_V, b_K, b_V are TL's _W_K, _W_V,
_b_K, _b_V, of n_key_value_heads heads. Rotary positions (rotate_half layout: TL's
rotary_adjacent_pairs=False) are qkov's positional="rotary" with rotary_dim, rotary_base
and rescaled frequencies (NTK-by-parts or rotary_scaling_factor: `rotary_scaling`);
parallel_attn_mlp and gated_mlp are qkov's parallel and gated_mlp.

TL's normalization_type is qkov's `normalization` (TL's eps its norm_eps): None = "none",
"RMSPre" = "rms", "LN" = "layernorm", "RMS" = "rmsnorm"; "LNPre" (LN with its weights
folded away) is "layernorm" with w = 1, b = 0. TL always has every bias (zeros when unused);
qkov's bias=False model is TL's with all of them zero.

`read_state_dict` returns qkov's weights of a bias=True model as float64 tensors under the
paper's names, each per-layer tensor stacked on a leading [n_layers] axis.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from qkov.config import ModelConfig
from qkov.errors import QkovError
from qkov.model import RMS_EPS
from qkov.weights import weight_shapes

INSTALL_HINT = "pip install 'qkov[interop]' (transformer-lens==3.9.0)"
BUFFERS = ("mask", "IGNORE", "rotary_sin", "rotary_cos")  # TL attention buffers, not weights
# grouped-query attention: TL keeps the n_kv_heads keys and values under "_W_K" etc.
GROUPED = ("W_K", "W_V", "b_K", "b_V")
TL_KEYS = {  # qkov name -> TL key; "{l}" marks a per-layer tensor
    "W_E": "embed.W_E",
    "W_pos": "pos_embed.W_pos",
    **{n: f"blocks.{{l}}.attn.{n}" for n in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V")},
    "b_O": "blocks.{l}.attn.b_O",
    **{n: f"blocks.{{l}}.mlp.{n}" for n in ("W_in", "b_in", "W_out", "b_out", "W_gate")},
    **{f"{ln}_{p}": f"blocks.{{l}}.{ln}.{p}" for ln in ("ln1", "ln2") for p in ("w", "b")},
    "ln_final_w": "ln_final.w",
    "ln_final_b": "ln_final.b",
    "W_U": "unembed.W_U",
    "b_U": "unembed.b_U",
}
BIASES = ("b_Q", "b_K", "b_V", "b_O", "b_in", "b_out", "b_U")
NORMALIZATIONS = {None: "none", "RMSPre": "rms", "LN": "layernorm", "LNPre": "layernorm"}
NORMALIZATIONS["RMS"] = "rmsnorm"
# TL's activation names -> qkov's; gelu_fast and gelu_pytorch_tanh are GPT-2's tanh gelu.
ACT_FNS = {"gelu": "gelu", "relu": "relu", "silu": "silu", "gelu_new": "gelu_new"}
ACT_FNS |= {"gelu_fast": "gelu_new", "gelu_pytorch_tanh": "gelu_new"}
# TL architectures whose norm comes after each sublayer (transformer_lens.utilities.architectures)
POST_NORM_ARCHITECTURES = ("Olmo2ForCausalLM", "Olmo3ForCausalLM")
_LAYER_KEY = re.compile(r"blocks\.(\d+)\.(\w+)\.(\w+)")


def require_tl():
    """Import transformer_lens lazily, or explain how to install it."""
    try:
        import transformer_lens
    except ImportError:
        raise QkovError(f"TransformerLens is not installed: {INSTALL_HINT}") from None
    return transformer_lens


def tl_key(name: str, l: int | None = None, grouped: bool = False) -> str:
    """The TL key of qkov weight `name` (of layer l): tl_key("W_in", 0) = "blocks.0.mlp.W_in";
    with grouped-query attention (grouped) TL's W_K is "blocks.0.attn._W_K"."""
    key = TL_KEYS[name].format(l=l)
    return key.replace(".attn.", ".attn._") if grouped and name in GROUPED else key


def tl_keys(name: str, n_layers: int, grouped: bool = False) -> list[str]:
    """Every TL key of qkov weight `name`: one per layer, or one for a model-wide tensor."""
    if "{l}" not in TL_KEYS[name]:
        return [tl_key(name)]
    return [tl_key(name, l, grouped) for l in range(n_layers)]


# ---------------------------------------------------------------------------- config
def cfg_dict(tl_cfg: Any) -> dict[str, Any]:
    """A TL config (dict or HookedTransformerConfig) as a plain dict."""
    if isinstance(tl_cfg, Mapping):
        return dict(tl_cfg)
    if hasattr(tl_cfg, "to_dict"):
        return dict(tl_cfg.to_dict())
    raise QkovError(
        f"TL config must be a dict or a HookedTransformerConfig, got {type(tl_cfg).__name__}"
    )


def _refuse_unsupported(c: dict[str, Any], source: str) -> None:
    """One QkovError line for any TL feature qkov's model does not compute."""

    def bad(what: str) -> QkovError:
        return QkovError(f"{source}: {what}, which qkov's model does not have")

    pos = c.get("positional_embedding_type", "standard")
    if pos not in ("standard", "shortformer", "rotary"):
        raise bad(f"positional_embedding_type={pos!r} (qkov has standard, shortformer, rotary)")
    if pos == "rotary" and c.get("rotary_adjacent_pairs", False):
        raise bad("rotary_adjacent_pairs=True (GPT-J's interleaved rotary layout)")
    if pos == "rotary" and c.get("use_yarn_rope", False):
        raise bad("use_yarn_rope=True (YaRN's rescaled rotary frequencies and scores)")
    norm = c.get("normalization_type", "LN")  # TL's default
    if norm not in NORMALIZATIONS:
        raise bad(f"normalization_type={norm!r} (qkov reads None, LN, LNPre, RMS, RMSPre)")
    if pos == "shortformer" and norm in ("LN", "LNPre", "RMS"):
        raise QkovError(
            f"{source}: shortformer positions with normalization_type={norm!r} are not "
            "supported (qkov refuses shortformer with a learned norm): use 'standard' positions"
        )
    if norm in ("LN", "LNPre") and c.get("final_rms", False):
        raise bad("final_rms=True with LayerNorm blocks (an RMS final norm after LN blocks)")
    if not c.get("attn_only", False):
        if c.get("num_experts"):
            raise bad(f"num_experts={c['num_experts']} (a mixture-of-experts MLP)")
        act = c.get("act_fn", "relu")  # TL's default
        if act not in ACT_FNS:
            raise bad(f"act_fn={act!r} (qkov reads {', '.join(ACT_FNS)})")
    if c.get("original_architecture") in POST_NORM_ARCHITECTURES:
        raise bad(f"original_architecture={c['original_architecture']!r} (post-norm blocks)")
    checks = {  # key: (TL's default, the value qkov needs)
        "attention_dir": ("causal", "causal"),
        "use_local_attn": (False, False),
        "use_qk_norm": (False, False),
        "use_normalization_before_and_after": (False, False),
        "scale_attn_by_inverse_layer_idx": (False, False),
        "clip_qkv": (None, None),
        "use_logn_attn": (False, False),
        "post_embedding_ln": (False, False),
        "use_attention_sinks": (False, False),
    }
    for key, (default, want) in checks.items():
        if c.get(key, default) != want:
            raise bad(f"{key}={c[key]!r}")
    for cap in ("attn_scores_soft_cap", "output_logits_soft_cap"):
        if (c.get(cap) or -1.0) > 0:
            raise bad(f"{cap}={c[cap]}")
    d_vocab_out = c.get("d_vocab_out", -1)
    if d_vocab_out not in (-1, None, c["d_vocab"]):
        raise bad(f"d_vocab_out={d_vocab_out} differs from d_vocab={c['d_vocab']}")


def check_config(c: dict[str, Any], source: str) -> tuple[ModelConfig, str | None, float]:
    """Validate a TL config; returns (qkov config with bias=True, TL normalization_type,
    attention scale). Absent keys take TL's defaults (normalization_type "LN", attn_only
    False, act_fn "relu", d_mlp 4 d_model), as HookedTransformerConfig would."""
    need = ("n_layers", "d_model", "n_ctx", "d_head", "n_heads", "d_vocab")
    missing = [k for k in need if c.get(k) is None]
    if missing:
        raise QkovError(f"{source}: TL config lacks {missing}: pass the HookedTransformerConfig")
    _refuse_unsupported(c, source)
    norm = c.get("normalization_type", "LN")
    d_model, d_head = int(c["d_model"]), int(c["d_head"])
    d_mlp = 0
    if not c.get("attn_only", False):
        d_mlp = int(c["d_mlp"]) if c.get("d_mlp") is not None else 4 * d_model
        if d_mlp <= 0:
            raise QkovError(f"{source}: attn_only=False needs d_mlp > 0, got d_mlp={d_mlp}")
    if c.get("use_attn_scale", True):
        scale = float(c.get("attn_scale") or -1.0)
        scale = math.sqrt(d_head) if scale <= 0 else scale
    else:
        scale = 1.0
    seed = c.get("seed")
    pos = c.get("positional_embedding_type", "standard")
    rotary = {}
    if pos == "rotary":
        rotary = {
            "rotary_dim": c.get("rotary_dim"),
            "rotary_base": float(c.get("rotary_base", 1e4)),
        }
        rotary["rotary_scaling"] = _rotary_scaling(c)
    cfg = ModelConfig(
        n_layers=int(c["n_layers"]),
        n_heads=int(c["n_heads"]),
        d_model=d_model,
        d_head=d_head,
        n_ctx=int(c["n_ctx"]),
        d_vocab=int(c["d_vocab"]),
        positional=pos,
        seed=seed if isinstance(seed, int) and seed >= 0 else 0,
        normalization=NORMALIZATIONS[norm],
        d_mlp=d_mlp,
        act_fn=ACT_FNS[c.get("act_fn", "relu")] if d_mlp else ModelConfig.act_fn,
        bias=True,
        parallel=bool(d_mlp and c.get("parallel_attn_mlp", False)),
        gated_mlp=bool(d_mlp and c.get("gated_mlp", False)),
        n_kv_heads=c.get("n_key_value_heads") or None,
        norm_eps=float(c.get("eps", RMS_EPS)),
        **rotary,
    )
    return cfg, norm, scale


def _rotary_scaling(c: dict[str, Any]) -> dict[str, Any] | None:
    """TL's rescaled rotary frequencies as qkov's `rotary_scaling`: NTK-by-parts (Llama 3.1,
    computed as transformers' "llama3") or a linear rotary_scaling_factor (which TL leaves
    unused under NTK-by-parts)."""
    if c.get("use_NTK_by_parts_rope", False):
        return {
            "rope_type": "llama3",
            "factor": float(c.get("NTK_by_parts_factor", 8.0)),
            "low_freq_factor": float(c.get("NTK_by_parts_low_freq_factor", 1.0)),
            "high_freq_factor": float(c.get("NTK_by_parts_high_freq_factor", 4.0)),
            "original_max_position_embeddings": int(c.get("NTK_original_ctx_len", 8192)),
        }
    factor = float(c.get("rotary_scaling_factor") or 1.0)
    return None if factor == 1.0 else {"rope_type": "linear", "factor": factor}


# ---------------------------------------------------------------------------- state dict
def _describe(cfg: ModelConfig, norm: str | None) -> str:
    """How the TL config's words name what a model has, for error messages."""
    mlp = f"attn_only=False, d_mlp={cfg.d_mlp}" if cfg.d_mlp else "attn_only=True"
    return f"{mlp}, normalization_type={norm!r}"


def _check_keys(sd: Mapping[str, Tensor], expected: set[str], cfg, norm, source) -> None:
    """Every key of `sd` must be a weight the TL config implies (or an attention buffer)."""
    unknown = []
    for key in sd:
        m = _LAYER_KEY.fullmatch(key)
        if key in expected or (m and m[2] == "attn" and m[3] in BUFFERS):
            continue
        unknown.append(key)
    if not unknown:
        return
    if not cfg.d_mlp and any(".mlp." in k for k in unknown):
        raise QkovError(
            f"{source} holds MLP weights {[k for k in unknown if '.mlp.' in k][:4]} but its "
            "TL config says attn_only=True: set attn_only=False and d_mlp if the model has MLPs"
        )
    norm_keys = [k for k in unknown if re.fullmatch(r"(blocks\.\d+\.ln[12]|ln_final)\.\w+", k)]
    if norm_keys:
        raise QkovError(
            f"{source} holds norm weights {norm_keys[:4]} that a TL model with "
            f"{_describe(cfg, norm)} does not have: does the config belong to these weights?"
        )
    raise QkovError(
        f"{source} has tensors that a TL model with n_layers={cfg.n_layers}, "
        f"{_describe(cfg, norm)} does not have: {unknown[:6]}"
    )


def _read_tensor(value: Any, shape: tuple[int, ...], key: str, source: str) -> Tensor:
    """One TL tensor as float64 on CPU, its shape checked."""
    if not isinstance(value, Tensor) or not torch.is_floating_point(value):
        raise QkovError(f"{source}: {key} is not a float tensor")
    if tuple(value.shape) != shape:
        raise QkovError(
            f"{source}: {key} has shape {list(value.shape)} but the TL config implies "
            f"{list(shape)}: does the config belong to these weights?"
        )
    return value.detach().to("cpu", torch.float64)


def read_state_dict(
    sd: Mapping[str, Tensor], cfg: ModelConfig, norm: str | None, source: str
) -> dict[str, Tensor]:
    """A TL state dict as the float64 weights of qkov's `cfg` (bias=True), [L, ...] stacked.

    Absent biases and LN biases read as zeros (TL's init); "LNPre" has no norm weights in
    the state dict, so they read as w = 1, b = 0."""
    shapes = weight_shapes(cfg)
    # TL's grouped-query attention (n_key_value_heads set, even to n_heads) keys "_W_K"
    L, grouped = cfg.n_layers, any(key.endswith(".attn._W_K") for key in sd)
    stored = {n for n in shapes if norm != "LNPre" or not n.startswith("ln")}
    expected = {key for n in stored for key in tl_keys(n, L, grouped)}
    _check_keys(sd, expected, cfg, norm, source)

    def default(name: str, key: str, shape: tuple[int, ...]) -> Tensor:
        if name in stored and not (name in BIASES or name.endswith("_b")):
            raise QkovError(f"{source} is missing {key}, which {_describe(cfg, norm)} needs")
        fill = 1.0 if name.endswith("_w") else 0.0
        return torch.full(shape, fill, dtype=torch.float64)

    def read(name: str, shape: tuple[int, ...], l: int | None = None) -> Tensor:
        key = tl_key(name, l, grouped)
        return _read_tensor(sd[key], shape, key, source) if key in sd else default(name, key, shape)

    weights = {}
    for name, shape in shapes.items():
        if "{l}" in TL_KEYS[name]:  # [L, *shape of one layer]
            per_layer = [read(name, shape[1:], l) for l in range(L)]
            weights[name] = torch.stack(per_layer) if L else torch.zeros(shape, dtype=torch.float64)
        else:
            weights[name] = read(name, shape)
    return weights
