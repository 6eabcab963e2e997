"""Will a training step fit in memory? Checked before the model is built or a file written.

`--n-ctx 10000000` spent minutes initialising W_pos and `--n-ctx 100000 --batch-size 1`
hung in its first step; an estimate of a step's memory refuses them at once instead."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from qkov.config import ModelConfig
from qkov.errors import QkovError

FLOAT_BYTES = 4  # fp32 weights, optimizer state and activations (bf16 autocast uses less)


@dataclass(frozen=True)
class StepMemory:
    """Bytes a training step holds at its peak, by part (see `step_memory`)."""

    params: int  # weights, gradients and the two AdamW moments
    attention: int  # attention patterns kept for backward
    activations: int  # the rest: residual streams, q, k, v, z, logits chunks

    @property
    def total(self) -> int:
        return self.params + self.attention + self.activations


def step_memory(cfg: ModelConfig, batch_size: int) -> StepMemory:
    """Estimate the memory of one AdamW training step, with B = batch_size, T = n_ctx,
    L, H, D, Dh, V, M = d_mlp the model's sizes and P = cfg.n_params (every weight the
    config has, W_in and W_out included), all in fp32 (4 bytes):

        params      = 4 bytes * (4 P + T D)        weights, gradients, exp_avg, exp_avg_sq;
                                                   + W_pos, allocated even when unused
        attention   = 4 bytes * L B H T^2          the pattern [batch, n_heads, n_ctx, n_ctx]
                                                   of each layer, kept for backward
        activations = 4 bytes * (L (4 B T H Dh + 3 B T D) + 2 B T D + c V
                                 + L (2 B T M + 2 B T D))
                                                   q, k, v, z and the layer's stream
                                                   inputs; the final stream and its
                                                   gradient; one chunk of c logits
                                                   (qkov.loss.chunk_rows); with an MLP
                                                   (M > 0; 0 otherwise) its pre- and post-
                                                   activation [B, T, M] and its input and
                                                   the mid-layer stream [B, T, D]

    An estimate, not a bound: it is meant to catch configurations off by orders of
    magnitude, not to predict the allocator to the byte."""
    from qkov.loss import chunk_rows

    B, T = batch_size, cfg.n_ctx
    L, H, D, Dh, V = cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head, cfg.d_vocab
    params = 4 * cfg.n_params + T * D
    attention = L * B * H * T * T
    activations = L * (4 * B * T * H * Dh + 3 * B * T * D) + 2 * B * T * D
    activations += min(chunk_rows(V), B * T) * V
    if cfg.d_mlp:
        activations += L * (2 * B * T * cfg.d_mlp + 2 * B * T * D)
    return StepMemory(FLOAT_BYTES * params, FLOAT_BYTES * attention, FLOAT_BYTES * activations)


def available_memory(device: str = "cpu") -> int | None:
    """Bytes this process can still allocate on `device`: MemAvailable of /proc/meminfo on
    CPU (free pages where there is none), free GPU memory on CUDA; None if unknown."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return int(free)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # reported in kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def size_str(n: float) -> str:
    """Bytes as every size qkov prints: '6.6 GB'; '850.0 MB' below 1 GB, '12.3 kB' below 1 MB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n / 1e3:.1f} kB"


def check_step_memory(
    cfg: ModelConfig, batch_size: int, device: str = "cpu", processes: int = 1
) -> None:
    """Refuse a configuration whose training step needs more memory than `device` has free.

    `processes` ranks on one machine each hold the weights and 1/processes of the batch."""
    need = step_memory(cfg, max(1, batch_size // processes))
    total = need.total * (processes if device.startswith("cpu") else 1)
    have = available_memory(device)
    if have is None or total <= have:
        return
    mlp = cfg.d_mlp and cfg.d_mlp > 4 * cfg.d_model  # an MLP wider than usual: name it first
    if need.params >= need.attention + need.activations:
        mend = "lower " + ("--d-mlp, " if mlp else "") + "--d-model, --vocab-size or --n-layers"
    else:
        mend = "lower " + ("--d-mlp, " if mlp else "") + "--n-ctx or --batch-size"
    raise QkovError(
        f"n_ctx={cfg.n_ctx}, batch_size={batch_size}, d_model={cfg.d_model}, "
        + (f"d_mlp={cfg.d_mlp}, " if cfg.d_mlp else "")
        + f"d_vocab={cfg.d_vocab}, n_layers={cfg.n_layers} needs about {size_str(total)} for a "
        f"training step (weights and AdamW state {size_str(need.params)}, attention patterns "
        f"{size_str(need.attention)}, other activations {size_str(need.activations)}) but "
        f"{size_str(have)} is available on {device}: {mend}"
    )
