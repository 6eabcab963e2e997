"""Causal self-attention for the model's fast path: `causal_attention(q, k, v)`.

Equals `F.scaled_dot_product_attention(q, k, v, is_causal=True)` (scale 1/sqrt(d_head)),
forward and backward, up to float rounding. On a CPU in float32 with d_head a multiple of
16 it runs qkov's own kernel (`qkov/kernels/causal_attention.c`, compiled on first use),
which never computes the masked half of the scores and keeps each head's keys and values
in cache; PyTorch's CPU kernel at d_head 32 reached ~25% of the matmul peak on the
training benchmark (`benchmarks/bench_vs_transformer_lens.py`). Everywhere else (a GPU,
autocast, another d_head, no C compiler, `QKOV_KERNELS=0`) it is PyTorch's SDPA.

The kernel's output is laid out [batch, pos, head, d_head] (returned as the usual
[batch, head, pos, d_head] view), so merging the heads afterwards is a view, not a copy.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor

from qkov import kernels
from qkov.kernels import pointer as _ptr

__all__ = ["causal_attention", "implementation", "kernel_available", "kernel_enabled"]

_enabled = True


class _Strides(ctypes.Structure):
    _fields_ = [("b", ctypes.c_longlong), ("h", ctypes.c_longlong), ("n", ctypes.c_longlong)]


def _strides(x: Tensor) -> _Strides:
    return _Strides(x.stride(0), x.stride(1), x.stride(2))


def _library(d_head: int) -> ctypes.CDLL | None:
    return kernels.load("causal_attention", (f"DH={d_head}",))


def kernel_available(d_head: int) -> bool:
    """Whether qkov's CPU kernel runs for this d_head here (built on first call)."""
    return d_head % 16 == 0 and _library(d_head) is not None


def implementation(d_head: int, device: str | torch.device) -> str:
    """Which attention a float32 training step runs for this d_head on this device, in
    words (what `qkov train` records in versions.json)."""
    if torch.device(device).type != "cpu":
        return "PyTorch SDPA (not a CPU)"
    if d_head % 16:
        return f"PyTorch SDPA (d_head {d_head} is not a multiple of 16)"
    if not kernel_available(d_head):
        return f"PyTorch SDPA ({kernels.reason('causal_attention', (f'DH={d_head}',))})"
    return f"qkov CPU kernel (causal_attention.c, d_head {d_head})"


@contextmanager
def kernel_enabled(enabled: bool) -> Iterator[None]:
    """Within the block, use qkov's kernel where it applies (True) or always PyTorch's SDPA
    (False): e.g. to time one against the other in one process."""
    global _enabled
    before, _enabled = _enabled, enabled
    try:
        yield
    finally:
        _enabled = before


def _uses_kernel(q: Tensor, k: Tensor, v: Tensor) -> bool:
    return (
        _enabled
        and q.device.type == "cpu"
        and q.dtype == k.dtype == v.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and q.dim() == 4
        and q.shape == k.shape == v.shape
        and q.shape[2] > 0
        and all(x.stride(3) == 1 for x in (q, k, v))
        and kernel_available(q.shape[3])
    )


class _CausalAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        B, H, n, Dh = q.shape
        lib = _library(Dh)
        o = q.new_empty(B, n, H, Dh).transpose(1, 2)  # [B, H, n, Dh] view
        lse = q.new_empty(B, H, n)
        scale = ctypes.c_float(1.0 / math.sqrt(Dh))
        failed = lib.qkov_attention_forward(
            n, H, B * H, scale, _ptr(q), _strides(q), _ptr(k), _strides(k),
            _ptr(v), _strides(v), _ptr(o), _strides(o), _ptr(lse),
        )  # fmt: skip
        if failed:
            raise MemoryError("causal_attention: the kernel could not allocate its buffers")
        ctx.save_for_backward(q, k, v, o, lse)
        return o

    @staticmethod
    def backward(ctx, do: Tensor):
        q, k, v, o, lse = ctx.saved_tensors
        B, H, n, Dh = q.shape
        do = do if do.stride(3) == 1 else do.contiguous()
        # written head by head, each [pos, d_head] block in one sequential stream
        dq, dk, dv = (x.new_empty(B, H, n, Dh) for x in (q, k, v))
        scale = ctypes.c_float(1.0 / math.sqrt(Dh))
        failed = _library(Dh).qkov_attention_backward(
            n, H, B * H, scale, _ptr(q), _strides(q), _ptr(k), _strides(k), _ptr(v),
            _strides(v), _ptr(o), _strides(o), _ptr(do), _strides(do), _ptr(lse),
            _ptr(dq), _strides(dq), _ptr(dk), _strides(dk), _ptr(dv), _strides(dv),
        )  # fmt: skip
        if failed:
            raise MemoryError("causal_attention: the kernel could not allocate its buffers")
        return dq, dk, dv


def causal_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """softmax(q k^T / sqrt(d_head), causal) v: q, k, v [batch, head, pos, d_head] ->
    [batch, head, pos, d_head]; qkov's CPU kernel where it applies (module docstring),
    else `F.scaled_dot_product_attention(..., is_causal=True)`."""
    if _uses_kernel(q, k, v):
        return _CausalAttention.apply(q, k, v)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)
