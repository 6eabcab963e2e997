"""Model FLOPs utilisation (MFU): the FLOPs a training step must do, counted from the
config, over the machine's measured matmul rate (Chowdhery et al. 2022, PaLM, appendix B).

Per token, a forward pass multiplies the token's stream by every matmul weight once
(2 FLOPs per weight: a multiply and an add) and, in each layer, attends over the context:

    forward  = 2 N + 4 L n (H d_head)        N = the matmul weights (below)
    training = 3 x forward = 6 N + 12 L n (H d_head)   (backward: 2 x forward)

    N = L (4 H d_head d_model + m d_model d_mlp) + d_model d_vocab

The 4 matrices per head are W_Q, W_K, W_V, W_O; m = 2 (W_in, W_out) or 3 with a gated MLP;
d_model d_vocab is W_U. W_E and W_pos are lookups and additions, not matmuls; biases,
norms, softmax and the optimizer are not counted (as in PaLM). The attention term counts
q k^T and pattern @ v over all n = n_ctx positions: the causal half is not discounted, the
PaLM convention, so MFU is comparable with published figures.

A causal kernel (qkov's CPU attention, SDPA's flash kernel) skips the masked half, so where
attention is a large share of the count and the matmuls run near the peak, this MFU can
pass 100%: `qkov train` at d_model 512, 8 heads, n_ctx 512, batch 16 logged 102-113% on a
2-core AMD EPYC (2026-12-06: 9,100 tokens/s, measured from the wall clock too; a peak of
~216 GFLOP/s). Counted with the causal half discounted (6 N + 6 L n H d_head) the same
steps run at ~200 GFLOP/s, 93% of the peak.
"""

from __future__ import annotations

import time

import torch

from qkov.config import ModelConfig

__all__ = [
    "forward_flops_per_token",
    "matmul_peak",
    "matmul_weights",
    "mfu",
    "train_step_flops",
]


def matmul_weights(cfg: ModelConfig) -> int:
    """N: the number of weights used in matmuls (W_Q, W_K, W_V, W_O, W_in, W_out, W_U)."""
    H, Dh, D = cfg.n_heads, cfg.d_head, cfg.d_model
    kv_heads = getattr(cfg, "n_kv_heads", None) or H  # grouped-query attention shares K, V
    attn = D * Dh * (2 * H + 2 * kv_heads)
    mlp = (3 if getattr(cfg, "gated_mlp", False) else 2) * D * cfg.d_mlp
    return cfg.n_layers * (attn + mlp) + D * cfg.d_vocab


def forward_flops_per_token(cfg: ModelConfig, n_ctx: int | None = None) -> int:
    """2 N + 4 L n (H d_head): the forward pass's matmul FLOPs per token at context n."""
    n = n_ctx or cfg.n_ctx
    return 2 * matmul_weights(cfg) + 4 * cfg.n_layers * n * cfg.n_heads * cfg.d_head


def train_step_flops(cfg: ModelConfig, batch_size: int, n_ctx: int | None = None) -> int:
    """FLOPs of one training step (forward + backward) on batch_size sequences of n_ctx
    tokens: 3 x forward per token (see the module docstring for the formula)."""
    n = n_ctx or cfg.n_ctx
    return 3 * forward_flops_per_token(cfg, n) * batch_size * n


def matmul_peak(
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    size: int | None = None,
    reps: int = 5,
) -> float:
    """The measured matmul rate, FLOP/s: the fastest of `reps` [size, size] @ [size, size]
    products (size 2048 on a CPU, 8192 on a GPU) into a preallocated result, the practical
    ceiling that MFU divides by."""
    device = torch.device(device)
    size = size or (2048 if device.type == "cpu" else 8192)
    # drawn on the device from a generator of its own (the global RNG is left alone): on
    # a GPU no host draw and copy (two 8192^2 draws: ~0.6 s on this project's 2-core CPU)
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, generator=g, device=device, dtype=dtype)
    b = torch.randn(size, size, generator=g, device=device, dtype=dtype)
    out = torch.empty(size, size, device=device, dtype=dtype)  # written in place: the
    # product's rate, not the allocator's (a fresh 16 MB result costs ~4,000 page faults)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.mm(a, b, out=out)  # warm-up: kernels chosen, memory touched
    sync()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        sync()
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best


def mfu(flops: float, seconds: float, peak: float) -> float:
    """Model FLOPs utilisation: the achieved rate flops / seconds as a share of `peak`."""
    return flops / seconds / peak
