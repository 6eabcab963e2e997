"""The tensors a ModelConfig implies: which of the paper's matrices (and biases, norm weights)
a model has and their shapes, checked before anything is allocated."""

from __future__ import annotations

from torch import Tensor

from qkov.config import ModelConfig
from qkov.errors import QkovError

# The attention-only model's tensors (every config has them).
WEIGHT_NAMES = ("W_E", "W_pos", "W_Q", "W_K", "W_V", "W_O", "W_U")
# The tensors without a leading n_layers axis (`weight_shapes`); every other has one.
MODEL_WIDE = ("W_E", "W_pos", "W_U", "b_U", "ln_final_w", "ln_final_b")


def weight_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The shape of each tensor a model of this config has, and only those (see qkov.model's
    docstring); the order in which they are initialised."""
    L, H, D, Dh, V = cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head, cfg.d_vocab
    M, KV = cfg.d_mlp, cfg.n_kv_heads
    shapes: dict[str, tuple[int, ...]] = {
        "W_E": (V, D),
        "W_pos": (cfg.n_ctx, D),
        "W_Q": (L, H, D, Dh),
        "W_K": (L, KV, D, Dh),
        "W_V": (L, KV, D, Dh),
        "W_O": (L, H, Dh, D),
        "W_U": (D, V),
    }
    if cfg.positional == "rotary":  # no W_pos (n_ctx may be 131072: never allocate it)
        del shapes["W_pos"]
    if M:
        shapes |= {"W_in": (L, D, M), "W_out": (L, M, D)}
        shapes |= {"W_gate": (L, D, M)} if cfg.gated_mlp else {}
    if cfg.bias:
        shapes |= {"b_Q": (L, H, Dh), "b_K": (L, KV, Dh), "b_V": (L, KV, Dh), "b_O": (L, D)}
        shapes |= {"b_in": (L, M), "b_out": (L, D)} if M else {}
        shapes["b_U"] = (V,)
    if cfg.normalization in ("layernorm", "rmsnorm"):
        parts = ("w", "b") if cfg.normalization == "layernorm" else ("w",)
        for ln in ("ln1", "ln2") if M else ("ln1",):
            shapes |= {f"{ln}_{p}": (L, D) for p in parts}
        shapes |= {f"ln_final_{p}": (D,) for p in parts}
    return shapes


def is_attention_only(cfg: ModelConfig) -> bool:
    """True for the paper's form the analyses assume: no MLP, no biases, no learned norm."""
    return (
        cfg.d_mlp == 0
        and not cfg.bias
        and cfg.normalization in ("none", "rms")
        and cfg.n_kv_heads == cfg.n_heads
    )


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
