"""The two configurations, validated at the door: ModelConfig (the shape of a decoder
transformer; attention-only by default) and TrainConfig (optimisation and data of a run).
Imports no torch, so the CLI builds its flags from them cheaply.

Positional modes (the paper's choice is the default):
  "shortformer": W_pos is added only to the inputs of queries and keys, never to the
                 residual stream, so the stream carries token information alone;
  "standard":    W_pos is added to the residual stream (GPT-2 style);
  "none":        no positional information at all;
  "rotary":      no W_pos: queries and keys are rotated by their position (RoPE, in the
                 rotate_half layout of GPT-NeoX and Llama) on the first rotary_dim dimensions
                 of each head (None: all of them), frequencies base^(-2i/rotary_dim) with
                 base = rotary_base. Attention scores then depend on relative position.
                 rotary_scaling (None: none) rescales those frequencies as checkpoints
                 trained for longer contexts do, with Hugging Face's names and values:
                 {"rope_type": "linear", "factor": f} or {"rope_type": "llama3", "factor",
                 "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}
                 (qkov.rotary.inverse_frequencies says how).

Normalisation (`normalization`):
  "none": the paper's analysed form: every path is linear once the patterns are frozen;
  "rms":  a weightless RMS norm, x / sqrt(mean(x^2) + eps), on the inputs of the heads and
          of the unembedding (no learned scale, no centring). It divides each position's
          vector by one positive number, so every circuit is still the paper's weight
          product, up to that per-position scale; path terms stay exact with it frozen;
  "layernorm": centre, divide by the RMS, then a learned weight and bias (GPT-2's);
  "rmsnorm": divide by the RMS, then a learned weight.
Each is pre-norm: before attention, before the MLP and before the unembedding.

MLPs (`d_mlp` > 0): after each attention layer, x -> act(x W_in + b_in) W_out + b_out with
act_fn one of ACT_FNS (gelu_new is GPT-2's tanh approximation). `bias` adds b_Q, b_K, b_V,
b_O, b_U (and b_in, b_out with an MLP); without it the model has no biases at all.

Public checkpoints need three more options (all off by default):
  gated_mlp:  x -> (act(x W_gate) * (x W_in + b_in)) W_out + b_out (Llama's SiLU "SwiGLU");
  parallel:   attention and MLP both read resid_pre (GPT-NeoX/Pythia's parallel residual);
  n_kv_heads: grouped-query attention: n_kv_heads key/value heads, each shared by
              n_heads / n_kv_heads consecutive query heads (None: n_heads, plain attention).
norm_eps is the eps of every norm (1e-5, GPT-2's; Llama uses 1e-6).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qkov.errors import QkovError

POSITIONAL_MODES = ("shortformer", "standard", "none", "rotary")
NORMALIZATIONS = ("none", "rms", "layernorm", "rmsnorm")
ACT_FNS = ("gelu", "gelu_new", "relu", "silu")
# rotary_scaling's rope_type -> its keys beside rope_type (qkov.rotary.inverse_frequencies)
ROTARY_SCALINGS = {
    "linear": ("factor",),
    "llama3": (
        "factor",
        "low_freq_factor",
        "high_freq_factor",
        "original_max_position_embeddings",
    ),
}


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of a decoder transformer. The defaults are the paper's attention-only
    model: no MLP (d_mlp=0), no biases, no norm."""

    n_layers: int = 2
    n_heads: int = 4
    d_model: int = 128
    d_head: int | None = None  # None: d_model // n_heads
    n_ctx: int = 256
    d_vocab: int = 4096
    positional: str = "shortformer"
    seed: int = 0
    init_std: float = 0.02
    normalization: str = "none"
    pos_init_std: float | None = None  # std of the initial W_pos (None: init_std)
    d_mlp: int = 0  # 0: attention-only
    act_fn: str = "gelu"
    bias: bool = False
    rotary_dim: int | None = None  # positional="rotary": rotated dims per head (None: d_head)
    rotary_base: float = 10000.0
    rotary_scaling: dict[str, Any] | None = None  # rescaled frequencies (see the docstring)
    parallel: bool = False
    n_kv_heads: int | None = None  # None: n_heads (no grouped-query attention)
    gated_mlp: bool = False
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.d_head is None and isinstance(self.d_model, int) and isinstance(self.n_heads, int):
            if self.n_heads > 0 and self.d_model % self.n_heads != 0:
                raise QkovError(
                    f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}: "
                    "pass d_head explicitly or pick sizes with d_model = n_heads * d_head"
                )
            object.__setattr__(self, "d_head", self.d_model // max(self.n_heads, 1))
        if self.positional == "rotary" and self.rotary_dim is None:
            object.__setattr__(self, "rotary_dim", self.d_head)
        if self.n_kv_heads is None:
            object.__setattr__(self, "n_kv_heads", self.n_heads)
        for name in (
            "n_kv_heads",
            "n_layers",
            "n_heads",
            "d_model",
            "d_head",
            "n_ctx",
            "d_vocab",
            "seed",
            "d_mlp",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise QkovError(f"config field {name} must be an integer, got {value!r}")
        for name in ("n_heads", "d_model", "d_head", "n_ctx", "d_vocab"):
            if getattr(self, name) <= 0:
                raise QkovError(f"config field {name} must be positive, got {getattr(self, name)}")
        if self.n_layers < 0:
            raise QkovError(
                f"config field n_layers must be >= 0 (0 is a bigram model), got {self.n_layers}"
            )
        if self.d_mlp < 0:
            raise QkovError(f"config field d_mlp must be >= 0 (0: no MLP), got {self.d_mlp}")
        if self.act_fn not in ACT_FNS:
            raise QkovError(f"act_fn={self.act_fn!r} is unknown: use one of " + ", ".join(ACT_FNS))
        if not isinstance(self.bias, bool):
            raise QkovError(f"config field bias must be true or false, got {self.bias!r}")
        if not 0 <= self.seed < 2**63:  # torch.Generator takes 64-bit seeds
            raise QkovError(f"config field seed must be in [0, 2**63), got {self.seed}")
        if self.positional not in POSITIONAL_MODES:
            raise QkovError(
                f"positional={self.positional!r} is unknown: use one of "
                + ", ".join(POSITIONAL_MODES)
            )
        if self.normalization not in NORMALIZATIONS:
            raise QkovError(
                f"normalization={self.normalization!r} is unknown: use one of "
                + ", ".join(NORMALIZATIONS)
            )
        if self.positional == "shortformer" and self.normalization in ("layernorm", "rmsnorm"):
            raise QkovError(
                f"positional='shortformer' with normalization={self.normalization!r} is not "
                "supported (W_pos would need each layer's norm folded in, as TransformerLens "
                "also refuses): use positional='standard' or normalization='rms'"
            )
        self._check_options()
        for name in ("init_std", "pos_init_std"):
            value = getattr(self, name)
            if value is None and name == "pos_init_std":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise QkovError(f"config field {name} must be a number, got {value!r}")
            try:
                finite = math.isfinite(value)
            except OverflowError:  # an int too big for a float
                finite = False
            if not (value > 0 and finite):
                raise QkovError(
                    f"config field {name} must be a positive finite number, got {value}"
                )

    def _check_options(self) -> None:
        """The options public checkpoints need: rotary, grouped-query attention, gated MLP."""
        if self.n_kv_heads <= 0 or self.n_heads % self.n_kv_heads:
            raise QkovError(
                f"n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads}: each key/value "
                "head serves the same number of query heads"
            )
        if self.rotary_dim is not None:
            r = self.rotary_dim
            if self.positional != "rotary":
                raise QkovError(
                    f"rotary_dim={r} needs positional='rotary' (got {self.positional!r}): "
                    "drop rotary_dim or set positional='rotary'"
                )
            if isinstance(r, bool) or not isinstance(r, int) or not 0 < r <= self.d_head or r % 2:
                raise QkovError(
                    f"rotary_dim={r!r} must be an even integer in [2, d_head={self.d_head}]"
                )
        self._check_rotary_scaling()
        for name in ("rotary_base", "norm_eps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 < v < math.inf):
                raise QkovError(f"config field {name} must be a positive finite number, got {v!r}")
        for name in ("parallel", "gated_mlp"):
            if not isinstance(getattr(self, name), bool):
                raise QkovError(f"config field {name} must be true or false")
        if (self.parallel or self.gated_mlp) and not self.d_mlp:
            raise QkovError("parallel and gated_mlp need an MLP: set d_mlp > 0")

    def _check_rotary_scaling(self) -> None:
        scaling = self.rotary_scaling
        if scaling is None:
            return
        if self.positional != "rotary":
            raise QkovError(
                f"rotary_scaling needs positional='rotary' (got {self.positional!r}): drop "
                "rotary_scaling or set positional='rotary'"
            )
        kind = scaling.get("rope_type") if isinstance(scaling, dict) else None
        if kind not in ROTARY_SCALINGS:
            raise QkovError(
                f"rotary_scaling={scaling!r} must be a JSON object whose rope_type is one of "
                + ", ".join(ROTARY_SCALINGS)
            )
        keys = set(ROTARY_SCALINGS[kind])
        if set(scaling) != keys | {"rope_type"}:
            raise QkovError(
                f"rotary_scaling of rope_type {kind!r} needs exactly the keys "
                f"{sorted(keys)} beside rope_type, got {sorted(set(scaling) - {'rope_type'})}"
            )
        for key in sorted(keys):
            v = scaling[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf:
                raise QkovError(
                    f"rotary_scaling's {key} must be a positive finite number, got {v!r}"
                )
        if kind == "llama3" and not scaling["low_freq_factor"] < scaling["high_freq_factor"]:
            raise QkovError(
                "rotary_scaling's low_freq_factor must be below its high_freq_factor, got "
                f"{scaling['low_freq_factor']} and {scaling['high_freq_factor']}"
            )

    def __hash__(self) -> int:  # rotary_scaling is a dict: hashed as its sorted items
        values = (getattr(self, f.name) for f in dataclasses.fields(self))
        return hash(tuple(tuple(sorted(v.items())) if isinstance(v, dict) else v for v in values))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> ModelConfig:
        if not isinstance(data, dict):
            raise QkovError(f"{source} must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known, key=str)
        if unknown:
            raise QkovError(f"{source} has unknown keys {unknown}: known keys are {sorted(known)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "config") -> ModelConfig:
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as e:  # JSONDecodeError, a 5000-digit int, deep nesting
            raise QkovError(f"{source} is not valid JSON ({e}): fix or regenerate it") from None
        return cls.from_dict(data, source)

    def save(self, path: str | Path) -> None:
        from qkov.io import atomic_write_text

        atomic_write_text(Path(path), self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        if not path.is_file():
            raise QkovError(f"{path} does not exist: is this a qkov checkpoint directory?")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise QkovError(f"{path} cannot be read as UTF-8 JSON ({e}): restore it") from None
        return cls.from_json(text, source=str(path))

    @property
    def n_params(self) -> int:
        """Parameter count of the weights: W_E, W_pos (if used), W_Q, W_K, W_V, W_O, W_U,
        and those the config adds (W_in, W_out, biases, norm weights)."""
        D, L = self.d_model, self.n_layers
        per_layer = 2 * D * self.d_head * (self.n_heads + self.n_kv_heads)  # Q, O; K, V
        pos = self.n_ctx * D if self.positional in ("shortformer", "standard") else 0
        mlp = (3 if self.gated_mlp else 2) * D * self.d_mlp
        n = 2 * self.d_vocab * D + pos + L * (per_layer + mlp)
        if self.bias:
            n += L * ((self.n_heads + 2 * self.n_kv_heads) * self.d_head + D) + self.d_vocab
            n += L * (self.d_mlp + D) if self.d_mlp else 0
        norms = 1 + L * (2 if self.d_mlp else 1)  # final, ln1 per layer, ln2 with an MLP
        n += {"layernorm": 2 * D, "rmsnorm": D}.get(self.normalization, 0) * norms
        return n


# ModelConfig fields that say how qkov initialises a model it trains, nothing of a checkpoint
# trained elsewhere (a Hugging Face folder): left out where such a checkpoint is described
TRAINING_ONLY = ("seed", "init_std", "pos_init_std")

# ModelConfig fields that act on a model only where another field says so (a condition on
# the config's dict): `acting_fields`
_ACTS_WHERE = {
    **dict.fromkeys(
        ("rotary_dim", "rotary_base", "rotary_scaling"), lambda c: c.get("positional") == "rotary"
    ),
    "pos_init_std": lambda c: c.get("positional") in ("shortformer", "standard"),
    **dict.fromkeys(("act_fn", "gated_mlp", "parallel"), lambda c: (c.get("d_mlp") or 0) > 0),
    "norm_eps": lambda c: c.get("normalization", "none") != "none",
    "n_kv_heads": lambda c: c.get("n_kv_heads") != c.get("n_heads"),
}


def acting_fields(config: dict[str, Any]) -> dict[str, Any]:
    """The fields of a ModelConfig's dict (`to_dict`, analysis.json's "config") that act on
    its model, in their order: the rotary options only where positions rotate, pos_init_std
    only where there is a W_pos, act_fn, gated_mlp and parallel only with an MLP, norm_eps
    only with a norm, n_kv_heads only where it differs from n_heads (grouped-query
    attention). What `qkov info` and the report's model card show."""
    return {k: v for k, v in config.items() if k not in _ACTS_WHERE or _ACTS_WHERE[k](config)}


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and data settings of a run (CLI flags use the same names)."""

    corpus: str = "stdlib"
    steps: int = 1500
    batch_size: int = 16
    lr: float = 3e-3
    warmup: int = 100
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    label_smoothing: float = 0.0  # train on targets (1 - ε) onehot + ε / d_vocab
    grad_clip: float = 1.0
    eval_interval: int = 100
    eval_batches: int = 8
    ckpt_interval: int = 250
    probe_interval: int = 0  # 0: no head probes during training
    seed: int = 0
    device: str = "cpu"
    init_from: str | None = None  # a model directory whose weights start the run (fine-tuning)
    keep_checkpoints: int = 0  # weight snapshots kept in RUN/snapshots (qkov.snapshots)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_interval", "eval_batches", "ckpt_interval"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise QkovError(f"--{name.replace('_', '-')} must be a positive integer, got {v!r}")
        for name in ("warmup", "probe_interval", "seed", "keep_checkpoints"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise QkovError(f"--{name.replace('_', '-')} must be >= 0, got {v!r}")
        if self.seed >= 2**63:  # torch.Generator takes 64-bit seeds
            raise QkovError(f"--seed must be below 2**63, got {self.seed}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise QkovError(f"--lr must be a positive number, got {self.lr}")
        if not self.grad_clip > 0:  # also refuses NaN
            raise QkovError(f"--grad-clip must be positive, got {self.grad_clip}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise QkovError(f"--weight-decay must be a finite number >= 0, got {self.weight_decay}")
        if not 0 <= self.label_smoothing < 1:  # also refuses NaN
            raise QkovError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0 <= self.min_lr_ratio <= 1:  # also refuses NaN
            raise QkovError(f"--min-lr-ratio must be in [0, 1], got {self.min_lr_ratio}")

    def recipe(self, n_ctx: int) -> str:
        """How the run trains, in words: 'on stdlib, 64 x 512 tokens a step, lr 3.00e-03
        (warmup 500, then constant), weight decay 0.01', and label smoothing where there is
        some (what `qkov info` and the report's model card show)."""
        if self.min_lr_ratio == 1.0:
            schedule = "then constant"
        else:
            schedule = f"then cosine to {self.min_lr_ratio:g} of it by step {self.steps:,}"
        parts = [
            f"on {self.corpus}",
            f"{self.batch_size} x {n_ctx} tokens a step",
            f"lr {self.lr:.2e} (warmup {self.warmup:,}, {schedule})",
            f"weight decay {self.weight_decay:g}",
        ]
        if self.label_smoothing:
            parts.append(f"label smoothing {self.label_smoothing:g}")
        return ", ".join(parts)

    @classmethod
    def recorded(cls, record: object) -> TrainConfig | None:
        """A run's train_config.json as read (a dict) -> its TrainConfig, or None where it is
        no such record (missing, or fields TrainConfig does not have or refuses)."""
        if not isinstance(record, dict) or not record:
            return None
        try:
            return cls(**record)
        except (TypeError, ValueError):  # unknown fields; values refused (QkovError)
            return None

    def lr_at(self, step: int) -> float:
        """Linear warmup to lr, then cosine decay to min_lr_ratio * lr at `steps`."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        frac = min(1.0, (step - self.warmup) / max(1, self.steps - self.warmup))
        cos = 0.5 * (1 + math.cos(math.pi * frac))
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * cos)
