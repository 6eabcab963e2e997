"""Rotary position embedding (RoPE), in the rotate_half layout of GPT-NeoX and Llama.

positional="rotary" adds nothing to the residual stream: each head's query and key at
position p are rotated by angles p * theta_i before the scores are taken. Only the first
rotary_dim dimensions of a head rotate (GPT-NeoX/Pythia: a quarter of them; Llama: all);
they form rotary_dim/2 pairs (i, i + rotary_dim/2), pair i turning at frequency
theta_i = base^(-2i / rotary_dim). Rotations compose, R_p^T R_s = R_{s-p}, so the score of
destination p and source s is q W_Q R_{s-p} W_K^T k^T: it depends on the relative offset
s - p alone, and at offset 0 it is the plain bilinear form W_QK = W_Q W_K^T.

Checkpoints trained for longer contexts rescale the frequencies once (`rotary_scaling`,
`inverse_frequencies`); the rotations, and all of the above, stay as they are.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from qkov.config import ModelConfig


def inverse_frequencies(cfg: ModelConfig) -> Tensor:
    """theta_i [rotary_dim / 2] (fp32): base^(-2i / rotary_dim), then cfg.rotary_scaling's:

    - "linear": every theta_i / factor (positions stretched by factor);
    - "llama3": by wavelength 2 pi / theta_i against the context the model was first
      trained at (N = original_max_position_embeddings): longer than N / low_freq_factor,
      theta_i / factor; shorter than N / high_freq_factor, theta_i as it is; between,
      (1 - s) theta_i / factor + s theta_i with s = (N / wavelength - low_freq_factor) /
      (high_freq_factor - low_freq_factor), which runs from 0 to 1 across that band."""
    r = cfg.rotary_dim
    theta = cfg.rotary_base ** -(torch.arange(0, r, 2, dtype=torch.float32) / r)
    scaling = cfg.rotary_scaling
    if scaling is None:
        return theta
    factor = float(scaling["factor"])
    if scaling["rope_type"] == "linear":
        return theta / factor
    n = float(scaling["original_max_position_embeddings"])
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    wavelength = 2 * math.pi / theta
    s = ((n / wavelength - low) / (high - low)).clamp(0.0, 1.0)
    return (1 - s) * theta / factor + s * theta


def rotary_cos_sin(
    cfg: ModelConfig, n: int, device: torch.device | str = "cpu", offset: int = 0
) -> tuple[Tensor, Tensor]:
    """cos and sin [n, rotary_dim] of positions offset .. offset + n - 1 (fp32, as the
    reference implementations compute them; each frequency appears twice, for both halves)."""
    pos = torch.arange(offset, offset + n, dtype=torch.float32)
    angles = pos[:, None] * inverse_frequencies(cfg)[None]  # [n, rotary_dim / 2]
    angles = torch.cat([angles, angles], dim=-1).to(device)  # [n, rotary_dim]
    return angles.cos(), angles.sin()


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x [..., pos, d_head] rotated by position on its first rotary_dim = cos.shape[-1] dims:
    x_rot * cos + rotate_half(x_rot) * sin, rotate_half(a, b) = (-b, a); the rest pass."""
    r = cos.shape[-1]
    x_rot, x_pass = x[..., :r], x[..., r:]
    a, b = x_rot[..., : r // 2], x_rot[..., r // 2 :]
    half = torch.cat([-b, a], dim=-1)
    out = x_rot * cos.to(x.dtype) + half * sin.to(x.dtype)
    return torch.cat([out, x_pass], dim=-1) if x_pass.shape[-1] else out


def relative_rotation(cfg: ModelConfig, offset: int) -> Tensor:
    """R [d_head, d_head] with rotate(x at p) . rotate(y at p + offset) = x R y^T: the matrix
    that sits between W_Q and W_K^T in a rotary head's QK circuit at relative offset
    `offset` (source position minus destination position; 0 is the identity)."""
    eye = torch.eye(cfg.d_head)
    cos_d, sin_d = rotary_cos_sin(cfg, 1, offset=0)
    cos_s, sin_s = rotary_cos_sin(cfg, 1, offset=offset)
    # Row i of rotate(I) is basis vector i rotated: Rd = rotate(I) at 0 (identity), Rs at offset.
    return rotate(eye, cos_d, sin_d) @ rotate(eye, cos_s, sin_s).T
