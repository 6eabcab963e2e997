"""TransformerLens interop: read TL attention-only checkpoints, write qkov models in TL format.

TL stores the paper's matrices in qkov's layout, one tensor per layer:

    embed.W_E [d_vocab, d_model]   pos_embed.W_pos [n_ctx, d_model]   unembed.W_U [d_model, d_vocab]
    blocks.{l}.attn.W_Q, W_K, W_V [n_heads, d_model, d_head]   W_O [n_heads, d_head, d_model]
    blocks.{l}.attn.b_Q, b_K, b_V [n_heads, d_head]   b_O [d_model]   unembed.b_U [d_vocab]
    blocks.{l}.ln1.w, .b and ln_final.w, .b [d_model]  (normalization_type "LN")

Biases are folded *exactly* into qkov's bias-free model by adding one residual dimension,
the bias direction, that holds the constant 1 at every position (homogeneous coordinates):
W_E gets a column of ones; the bias direction's row of W_Q/W_K/W_V is b_Q/b_K/b_V; its row
of W_U is b_U; nothing writes to it. Each b_O is moved into the embedding (every position's
residual starts with the sum of all b_O), and the layers that should not yet see a later
layer's b_O subtract its read-out through their bias row. The result has d_model + 1 and
the same logits and activations (q, k, v, patterns, z) as the TL model, so every qkov
analysis, including the path expansion, stays exact. In the path expansion the biases are
the constant terms carried by the bias direction: the direct path holds the logit offset
(Σ b_O) W_U + b_U, each OV circuit a constant row b_V W_O W_U, each QK circuit a source
preference b_Q W_K^T (b_K only adds a per-destination constant the softmax ignores).
A checkpoint whose biases are all zero is imported at its own width.

LayerNorm (normalization_type "LN" or "LNPre") is folded the standard way, as TL's
fold_ln + center_writing_weights does: ln weights into the reading matrices, ln biases
into b_Q/b_K/b_V/b_U, writing matrices (W_E, W_pos if standard, W_O, b_O) centred so the
mean subtraction is a no-op. What cannot be folded is the division by the residual norm, a
nonlinearity qkov's model does not have, so the imported model is TL's with every LN scale
set to 1. Then forward-based results (logits, loss, attention patterns, path expansion
against TL's logits, ablations, head scores) are approximate; weight-based circuit results
(QK/OV circuits and their eigenvalues, copying scores, composition scores) equal those TL
computes on its fold_ln model, which also ignores the scale. Import with LN is opt-in
(`fold_ln=True`). Shortformer + LN is refused, as TL refuses it: W_pos is shared by
all layers but would need each layer's own ln weight folded in.

TL's weightless RMS norm (normalization_type "RMSPre") is qkov's normalization="rms":
such models import and export exactly, both ways, when their biases are zero (a bias
direction would change each position's RMS, so biases are then refused).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from qkov.config import ModelConfig
from qkov.errors import QkovError
from qkov.model import RMS_EPS, AttnOnlyTransformer

INSTALL_HINT = "pip install 'qkov[interop]' (transformer-lens==3.9.0)"
_ATTN_KEYS = ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O")
_BUFFERS = ("mask", "IGNORE")  # TL attention buffers, not weights
_KEY = re.compile(r"blocks\.(\d+)\.(attn|ln1)\.(\w+)")


def _require_tl():
    """Import transformer_lens lazily, or explain how to install it."""
    try:
        import transformer_lens
    except ImportError:
        raise QkovError(f"TransformerLens is not installed: {INSTALL_HINT}") from None
    return transformer_lens


@dataclass
class Converted:
    """A TL checkpoint in qkov form: build the model with `.model()`.

    exact: False when LayerNorm was folded (the scale is dropped: see the module docstring).
    bias_direction: index of the constant-1 residual dimension holding the biases, or None.
    """

    config: ModelConfig
    weights: dict[str, Tensor]
    exact: bool
    bias_direction: int | None
    notes: list[str] = field(default_factory=list)

    def model(self) -> AttnOnlyTransformer:
        return AttnOnlyTransformer.from_weights(self.config, self.weights)


# ---------------------------------------------------------------------------- config
def _cfg_dict(tl_cfg: Any) -> dict[str, Any]:
    if isinstance(tl_cfg, Mapping):
        return dict(tl_cfg)
    if hasattr(tl_cfg, "to_dict"):
        return dict(tl_cfg.to_dict())
    raise QkovError(
        f"TL config must be a dict or a HookedTransformerConfig, got {type(tl_cfg).__name__}"
    )


def _check_config(c: dict[str, Any], source: str) -> tuple[ModelConfig, str | None, float]:
    """Validate a TL config; returns (qkov config, normalization, attention scale)."""
    need = ("n_layers", "d_model", "n_ctx", "d_head", "n_heads", "d_vocab")
    missing = [k for k in need if c.get(k) is None]
    if missing:
        raise QkovError(f"{source}: TL config lacks {missing}: pass the HookedTransformerConfig")

    def bad(what: str) -> QkovError:
        return QkovError(f"{source}: {what}; qkov imports causal attention-only models only")

    if not c.get("attn_only", False):
        raise bad("attn_only is False (the model has MLPs)")
    pos = c.get("positional_embedding_type", "standard")
    if pos not in ("standard", "shortformer"):
        raise bad(f"positional_embedding_type={pos!r} (need 'standard' or 'shortformer')")
    norm = c.get("normalization_type")
    if norm not in (None, "LN", "LNPre", "RMSPre"):
        raise bad(f"normalization_type={norm!r} (need None, 'LN', 'LNPre' or 'RMSPre')")
    if norm == "RMSPre" and abs(float(c.get("eps", RMS_EPS)) - RMS_EPS) > 1e-12:
        raise bad(f"RMSPre with eps={c['eps']} (qkov's rms norm uses eps={RMS_EPS})")
    if pos == "shortformer" and norm == "LN":
        raise QkovError(
            f"{source}: shortformer + LayerNorm cannot be folded (W_pos is shared by all "
            "layers but each layer's ln1.w would have to be folded into it), as in TL"
        )
    checks = {
        "attention_dir": ("causal", "causal"),
        "n_key_value_heads": (None, None),
        "use_local_attn": (False, False),
        "use_qk_norm": (False, False),
        "use_normalization_before_and_after": (False, False),
        "final_rms": (False, False),
    }
    for key, (default, want) in checks.items():
        if c.get(key, default) != want:
            raise bad(f"{key}={c[key]!r} is not supported (need {want!r})")
    for cap in ("attn_scores_soft_cap", "output_logits_soft_cap"):
        if (c.get(cap) or -1.0) > 0:
            raise bad(f"{cap}={c[cap]} is not supported")
    d_vocab_out = c.get("d_vocab_out", -1)
    if d_vocab_out not in (-1, None, c["d_vocab"]):
        raise bad(f"d_vocab_out={d_vocab_out} differs from d_vocab={c['d_vocab']}")
    d_head = int(c["d_head"])
    if c.get("use_attn_scale", True):
        scale = float(c.get("attn_scale") or -1.0)
        scale = math.sqrt(d_head) if scale <= 0 else scale
    else:
        scale = 1.0
    seed = c.get("seed")
    cfg = ModelConfig(
        n_layers=int(c["n_layers"]),
        n_heads=int(c["n_heads"]),
        d_model=int(c["d_model"]),
        d_head=d_head,
        n_ctx=int(c["n_ctx"]),
        d_vocab=int(c["d_vocab"]),
        positional=pos,
        seed=seed if isinstance(seed, int) and seed >= 0 else 0,
        normalization="rms" if norm == "RMSPre" else "none",
    )
    return cfg, norm, scale


# ---------------------------------------------------------------------------- import
def _collect(sd: Mapping[str, Tensor], cfg: ModelConfig, norm: str | None, source: str):
    """Sort a TL state dict into float64 tensors; unknown keys and missing weights raise."""
    L, H, D, Dh = cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head
    t: dict[str, Any] = {}
    layers: list[dict[str, Tensor]] = [{} for _ in range(L)]
    unknown = []
    for key, value in sd.items():
        m = _KEY.fullmatch(key)
        if m and int(m[1]) < L:
            if m[3] in _BUFFERS:
                continue
            if (m[2] == "attn" and m[3] in _ATTN_KEYS) or (m[2] == "ln1" and m[3] in ("w", "b")):
                layers[int(m[1])][m[3] if m[2] == "attn" else f"ln_{m[3]}"] = value
                continue
        elif key in (
            "embed.W_E",
            "pos_embed.W_pos",
            "unembed.W_U",
            "unembed.b_U",
            "ln_final.w",
            "ln_final.b",
        ):
            t[key] = value
            continue
        unknown.append(key)
    if unknown:
        hint = (
            " (MLP weights: qkov models are attention-only)"
            if any(".mlp." in k for k in unknown)
            else ""
        )
        raise QkovError(f"{source} has tensors qkov cannot place: {unknown[:6]}{hint}")
    has_ln = any("ln_w" in d for d in layers) or "ln_final.w" in t
    if has_ln and norm != "LN":
        raise QkovError(
            f"{source} holds LayerNorm weights but the config says normalization_type={norm!r}"
        )

    def get(value: Tensor | None, shape: tuple[int, ...], name: str, zero_ok: bool) -> Tensor:
        if value is None:
            if not zero_ok:
                raise QkovError(f"{source} is missing {name}: is it a TL attention-only model?")
            return torch.zeros(shape, dtype=torch.float64)
        if not isinstance(value, Tensor) or not torch.is_floating_point(value):
            raise QkovError(f"{source}: {name} is not a float tensor")
        if tuple(value.shape) != shape:
            raise QkovError(
                f"{source}: {name} has shape {list(value.shape)} but the TL config implies "
                f"{list(shape)}: does the config belong to these weights?"
            )
        return value.detach().to("cpu", torch.float64)

    ln = norm == "LN"
    w: dict[str, Any] = {
        "W_E": get(t.get("embed.W_E"), (cfg.d_vocab, D), "embed.W_E", False),
        "W_pos": get(t.get("pos_embed.W_pos"), (cfg.n_ctx, D), "pos_embed.W_pos", False),
        "W_U": get(t.get("unembed.W_U"), (D, cfg.d_vocab), "unembed.W_U", False),
        "b_U": get(t.get("unembed.b_U"), (cfg.d_vocab,), "unembed.b_U", True),
        "lnf_w": get(t.get("ln_final.w"), (D,), "ln_final.w", not ln) if ln else None,
        "lnf_b": get(t.get("ln_final.b"), (D,), "ln_final.b", True) if ln else None,
    }
    shapes = {
        "W_Q": (H, D, Dh),
        "W_K": (H, D, Dh),
        "W_V": (H, D, Dh),
        "W_O": (H, Dh, D),
        "b_Q": (H, Dh),
        "b_K": (H, Dh),
        "b_V": (H, Dh),
        "b_O": (D,),
    }
    for name, shape in shapes.items():
        per_layer = [
            get(layers[l].get(name), shape, f"blocks.{l}.attn.{name}", name[0] == "b")
            for l in range(L)
        ]
        w[name] = torch.stack(per_layer) if L else torch.zeros(0, *shape, dtype=torch.float64)
    if ln:
        w["ln_w"] = torch.stack(
            [get(layers[l].get("ln_w"), (D,), f"blocks.{l}.ln1.w", False) for l in range(L)]
        )
        w["ln_b"] = torch.stack(
            [get(layers[l].get("ln_b"), (D,), f"blocks.{l}.ln1.b", True) for l in range(L)]
        )
    return w


def convert_state_dict(
    state_dict: Mapping[str, Tensor],
    tl_cfg: Any,
    *,
    fold_ln: bool = False,
    drop_biases: bool = False,
    source: str = "TL state dict",
) -> Converted:
    """TL attention-only state dict + TL config -> qkov config and weights (see module doc).

    drop_biases: ignore the biases instead of folding them (approximate unless they are 0);
    keeps d_model, so weight analyses compare 1:1 with TL's, which also ignore biases."""
    c = _cfg_dict(tl_cfg)
    cfg, norm, scale = _check_config(c, source)
    rms = norm == "RMSPre"  # qkov's own normalization="rms": nothing to fold
    if rms:
        norm = None
    if norm is not None and not fold_ln:
        raise QkovError(
            f"{source} uses LayerNorm ({norm}), which qkov's model does not have: pass "
            "fold_ln=True to fold it (exact for circuit weights, approximate for forward passes)"
        )
    w = _collect(state_dict, cfg, norm, source)
    notes: list[str] = []
    dtype = (
        state_dict["embed.W_E"].dtype
        if isinstance(state_dict.get("embed.W_E"), Tensor)
        else torch.float32
    )
    dtype = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    W_E, W_pos, W_U, b_U = w["W_E"], w["W_pos"], w["W_U"], w["b_U"]
    W_Q, W_K, W_V, W_O = w["W_Q"], w["W_K"], w["W_V"], w["W_O"]
    b_Q, b_K, b_V, b_O = w["b_Q"], w["b_K"], w["b_V"], w["b_O"]

    # qkov divides scores by sqrt(d_head); a different TL attention scale goes into W_Q.
    ratio = math.sqrt(cfg.d_head) / scale
    if ratio != 1.0:
        W_Q, b_Q = W_Q * ratio, b_Q * ratio
        notes.append(f"attention scale {scale:g} folded into W_Q and b_Q")

    if norm is not None:
        if norm == "LN":
            # LN(x) = w * n(x) + b feeds q/k/v: fold w into W_Q/W_K/W_V, b into their biases.
            ln_w, ln_b = w["ln_w"][:, None, :, None], w["ln_b"]  # [L, 1, d_model, 1], [L, D]
            b_Q = b_Q + torch.einsum("ld,lhde->lhe", ln_b, W_Q)
            b_K = b_K + torch.einsum("ld,lhde->lhe", ln_b, W_K)
            b_V = b_V + torch.einsum("ld,lhde->lhe", ln_b, W_V)
            W_Q, W_K, W_V = W_Q * ln_w, W_K * ln_w, W_V * ln_w
            b_U = b_U + w["lnf_b"] @ W_U
            W_U = w["lnf_w"][:, None] * W_U
        # Centre everything that writes to the residual stream: LN's mean subtraction is
        # then a no-op and only the (dropped) division by the norm remains.
        W_E = W_E - W_E.mean(-1, keepdim=True)
        if cfg.positional == "standard":
            W_pos = W_pos - W_pos.mean(-1, keepdim=True)
        W_O = W_O - W_O.mean(-1, keepdim=True)
        b_O = b_O - b_O.mean(-1, keepdim=True)
        notes.append(
            f"LayerNorm ({norm}) folded; its scale is dropped, so forward passes are approximate"
        )

    has_bias = any(bool(b.abs().max() > 0) for b in (b_Q, b_K, b_V, b_O, b_U) if b.numel())
    if rms and has_bias and not drop_biases:
        raise QkovError(
            f"{source} has RMSPre normalisation and nonzero biases, which cannot be folded "
            "exactly (the bias direction would change each position's RMS): pass "
            "drop_biases=True to ignore them (approximate)"
        )
    bias_dir = None
    if has_bias and drop_biases:
        notes.append("nonzero biases dropped: forward passes are approximate")
    elif has_bias:
        L = cfg.n_layers
        bias_dir = cfg.d_model
        # later[l] = sum of b_O over layers >= l: what the residual holds too early at layer l.
        later = torch.flip(torch.cumsum(torch.flip(b_O, [0]), 0), [0])  # [L, d_model]
        total = later[0] if L else torch.zeros(cfg.d_model, dtype=torch.float64)
        ones = torch.ones(cfg.d_vocab, 1, dtype=torch.float64)
        W_E = torch.cat([W_E + total, ones], dim=1)
        W_pos = torch.cat([W_pos, torch.zeros(cfg.n_ctx, 1, dtype=torch.float64)], dim=1)

        def with_bias_row(W: Tensor, b: Tensor) -> Tensor:  # W [L,H,D,Dh], b [L,H,Dh]
            row = b - torch.einsum("ld,lhde->lhe", later, W)
            return torch.cat([W, row[:, :, None, :]], dim=2)

        W_Q, W_K, W_V = with_bias_row(W_Q, b_Q), with_bias_row(W_K, b_K), with_bias_row(W_V, b_V)
        W_O = torch.cat([W_O, torch.zeros(*W_O.shape[:3], 1, dtype=torch.float64)], dim=3)
        W_U = torch.cat([W_U, b_U[None]], dim=0)
        cfg = ModelConfig(**{**cfg.to_dict(), "d_model": cfg.d_model + 1})
        notes.append(f"biases folded exactly into the bias direction (residual dim {bias_dir})")
    weights = {
        "W_E": W_E,
        "W_pos": W_pos,
        "W_Q": W_Q,
        "W_K": W_K,
        "W_V": W_V,
        "W_O": W_O,
        "W_U": W_U,
    }
    weights = {k: v.to(dtype).contiguous() for k, v in weights.items()}
    exact = norm is None and not (has_bias and drop_biases)
    return Converted(cfg, weights, exact=exact, bias_direction=bias_dir, notes=notes)


def _read_weights(path: Path) -> dict[str, Tensor]:
    """safetensors, or .pt/.pth through torch.load(weights_only=True): never plain pickle."""
    from qkov.checkpoint import PICKLE_SUFFIXES, load_pt_weights, load_safetensors

    if path.suffix == ".safetensors":
        return load_safetensors(path)
    if path.suffix in PICKLE_SUFFIXES:
        return load_pt_weights(path)
    raise QkovError(f"{path}: unknown weights format; use .safetensors, .pt or .pth")


def load_transformer_lens(
    path: str | Path, tl_cfg: Any = None, *, fold_ln: bool = False
) -> AttnOnlyTransformer:
    """Load a TL checkpoint from a weights file or a folder (config.json + one weights file).

    tl_cfg: the TL config (dict or HookedTransformerConfig); default: config.json beside
    the weights."""
    path = Path(path)
    if not path.exists():
        raise QkovError(f"{path} does not exist: pass a TL weights file or folder")
    folder = path if path.is_dir() else path.parent
    if path.is_dir():
        found = sorted(p for ext in ("*.safetensors", "*.pt", "*.pth") for p in path.glob(ext))
        if len(found) != 1:
            raise QkovError(
                f"{path} holds {len(found)} weights files ({[p.name for p in found]}): "
                "it needs exactly one .safetensors, .pt or .pth file; pass the file instead"
            )
        path = found[0]
    if tl_cfg is None:
        cfg_path = folder / "config.json"
        if not cfg_path.is_file():
            raise QkovError(
                f"no TL config for {path}: put config.json (HookedTransformerConfig fields) "
                "beside it or pass tl_cfg"
            )
        from qkov.checkpoint import read_json

        tl_cfg = read_json(cfg_path)
        if "positional" in tl_cfg and "positional_embedding_type" not in tl_cfg:
            raise QkovError(f"{cfg_path} is a qkov config: load that folder with qkov.load")
    converted = convert_state_dict(_read_weights(path), tl_cfg, fold_ln=fold_ln, source=str(path))
    return converted.model()


def from_hooked_transformer(model: Any, *, fold_ln: bool = False) -> AttnOnlyTransformer:
    """A qkov copy of an in-memory TL HookedTransformer (weights copied, on CPU)."""
    converted = convert_state_dict(
        model.state_dict(), model.cfg, fold_ln=fold_ln, source="HookedTransformer"
    )
    return converted.model()


def from_transformer_lens(
    source: Any, tl_cfg: Any = None, *, fold_ln: bool = False
) -> AttnOnlyTransformer:
    """Import a TL model: a HookedTransformer, a path, or a state dict (with tl_cfg)."""
    if isinstance(source, (str, Path)):
        return load_transformer_lens(source, tl_cfg, fold_ln=fold_ln)
    if isinstance(source, Mapping):
        if tl_cfg is None:
            raise QkovError("a TL state dict needs its config: pass tl_cfg")
        return convert_state_dict(source, tl_cfg, fold_ln=fold_ln).model()
    if hasattr(source, "state_dict") and hasattr(source, "cfg"):
        return from_hooked_transformer(source, fold_ln=fold_ln)
    raise QkovError(f"cannot import a {type(source).__name__} as a TransformerLens model")


def from_pretrained(
    name: str, *, allow_download: bool = False, fold_ln: bool = False
) -> AttnOnlyTransformer:
    """Fetch a TL model by name from the Hugging Face hub (network!) and import it.

    Refuses unless allow_download=True: nothing in qkov downloads by default."""
    if not allow_download:
        raise QkovError(
            f"from_pretrained({name!r}) downloads from the hub: pass allow_download=True, "
            "or save the model locally and use load_transformer_lens"
        )
    tl = _require_tl()
    hooked = tl.HookedTransformer.from_pretrained_no_processing(name, device="cpu")
    return from_hooked_transformer(hooked, fold_ln=fold_ln)


# ---------------------------------------------------------------------------- export
def to_transformer_lens(model: AttnOnlyTransformer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """qkov model -> (TL state dict with zero biases, TL config dict). Exact.

    positional="none" becomes TL "standard" with W_pos = 0."""
    cfg = model.cfg
    w = {k: v.detach().to("cpu").clone() for k, v in model.weights().items()}
    H, Dh, D = cfg.n_heads, cfg.d_head, cfg.d_model
    sd: dict[str, Tensor] = {"embed.W_E": w["W_E"], "pos_embed.W_pos": w["W_pos"]}
    for l in range(cfg.n_layers):
        p = f"blocks.{l}.attn."
        for name in ("W_Q", "W_K", "W_V", "W_O"):
            sd[p + name] = w[name][l].contiguous()
        for name in ("b_Q", "b_K", "b_V"):
            sd[p + name] = torch.zeros(H, Dh, dtype=w["W_Q"].dtype)
        sd[p + "b_O"] = torch.zeros(D, dtype=w["W_O"].dtype)
    sd["unembed.W_U"] = w["W_U"]
    sd["unembed.b_U"] = torch.zeros(cfg.d_vocab, dtype=w["W_U"].dtype)
    tl_cfg = {
        "n_layers": cfg.n_layers,
        "d_model": D,
        "n_ctx": cfg.n_ctx,
        "d_head": Dh,
        "n_heads": H,
        "d_vocab": cfg.d_vocab,
        "d_vocab_out": cfg.d_vocab,
        "attn_only": True,
        "act_fn": None,
        "normalization_type": "RMSPre" if cfg.normalization == "rms" else None,
        "eps": RMS_EPS,
        "seed": cfg.seed,
        "positional_embedding_type": "shortformer"
        if cfg.positional == "shortformer"
        else "standard",
    }
    return sd, tl_cfg


def to_hooked_transformer(model: AttnOnlyTransformer) -> Any:
    """qkov model -> a TL HookedTransformer with the same weights (on CPU, float32)."""
    tl = _require_tl()
    sd, tl_cfg = to_transformer_lens(model)
    hooked = tl.HookedTransformer(tl.HookedTransformerConfig(**tl_cfg, device="cpu"))
    result = hooked.load_state_dict({k: v.float() for k, v in sd.items()}, strict=False)
    leftover = [k for k in result.missing_keys if k.rsplit(".", 1)[-1] not in _BUFFERS]
    if leftover or result.unexpected_keys:
        raise QkovError(
            f"TL rejected the exported weights (missing {leftover}, unexpected "
            f"{result.unexpected_keys}): is transformer-lens 3.9.0 installed?"
        )
    return hooked.eval()


def save_transformer_lens(model: AttnOnlyTransformer, out_dir: str | Path) -> Path:
    """Write a TL-format folder: config.json (TL config) + model.safetensors (TL keys)."""
    from qkov.io import atomic_save_safetensors, atomic_write_text

    out = Path(out_dir)
    sd, tl_cfg = to_transformer_lens(model)
    atomic_save_safetensors(out / "model.safetensors", sd, metadata={"format": "transformer_lens"})
    atomic_write_text(out / "config.json", json.dumps(tl_cfg, indent=2, sort_keys=True) + "\n")
    return out
