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
The model's fast path calls `causal_attention_packed` on the projections' own output
([batch, pos, 3 H d_head], or queries and keys apart from values): there the backward pass
also writes dq, dk and dv straight into that layout, with nothing to stack or transpose.
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

__all__ = [
    "causal_attention",
    "causal_attention_packed",
    "implementation",
    "kernel_available",
    "kernel_enabled",
]

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


def _kernel_forward(q: Tensor, k: Tensor, v: Tensor, o: Tensor) -> Tensor:
    """The kernel's forward pass into o; all four [batch, head, pos, d_head] with any
    strides but a contiguous last dimension. Returns each row's log-sum-exp [B, H, n]."""
    B, H, n, Dh = q.shape
    lse = q.new_empty(B, H, n)
    failed = _library(Dh).qkov_attention_forward(
        n, H, B * H, ctypes.c_float(1.0 / math.sqrt(Dh)), _ptr(q), _strides(q), _ptr(k),
        _strides(k), _ptr(v), _strides(v), _ptr(o), _strides(o), _ptr(lse),
    )  # fmt: skip
    if failed:
        raise MemoryError("causal_attention: the kernel could not allocate its buffers")
    return lse


def _kernel_backward(
    saved: tuple[Tensor, ...], do: Tensor, dq: Tensor, dk: Tensor, dv: Tensor
) -> None:
    """The kernel's backward pass: saved = (q, k, v, o, lse) of the forward pass, do the
    gradient of o; writes every entry of dq, dk, dv (any strides, contiguous last dim)."""
    q, k, v, o, lse = saved
    B, H, n, Dh = q.shape
    do = do if do.stride(3) == 1 else do.contiguous()
    failed = _library(Dh).qkov_attention_backward(
        n, H, B * H, ctypes.c_float(1.0 / math.sqrt(Dh)), _ptr(q), _strides(q), _ptr(k),
        _strides(k), _ptr(v), _strides(v), _ptr(o), _strides(o), _ptr(do), _strides(do),
        _ptr(lse), _ptr(dq), _strides(dq), _ptr(dk), _strides(dk), _ptr(dv), _strides(dv),
    )  # fmt: skip
    if failed:
        raise MemoryError("causal_attention: the kernel could not allocate its buffers")


class _CausalAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        B, H, n, Dh = q.shape
        o = q.new_empty(B, n, H, Dh).transpose(1, 2)  # [B, H, n, Dh] view
        lse = _kernel_forward(q, k, v, o)
        ctx.save_for_backward(q, k, v, o, lse)
        return o

    @staticmethod
    def backward(ctx, do: Tensor):
        q, k, v = ctx.saved_tensors[:3]
        # written head by head, each [pos, d_head] block in one sequential stream
        dq, dk, dv = (x.new_empty(x.shape) for x in (q, k, v))
        _kernel_backward(ctx.saved_tensors, do, dq, dk, dv)
        return dq, dk, dv


def causal_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """softmax(q k^T / sqrt(d_head), causal) v: q, k, v [batch, head, pos, d_head] ->
    [batch, head, pos, d_head]; qkov's CPU kernel where it applies (module docstring),
    else `F.scaled_dot_product_attention(..., is_causal=True)`."""
    if _uses_kernel(q, k, v):
        return _CausalAttention.apply(q, k, v)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def _heads(x: Tensor, parts: int, n_heads: int) -> tuple[Tensor, ...]:
    """[batch, pos, parts * n_heads * d_head] -> `parts` views [batch, head, pos, d_head]."""
    B, n = x.shape[:2]
    return x.view(B, n, parts, n_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)


def _split(qkv: Tensor, v: Tensor | None, n_heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """Views [batch, head, pos, d_head] of the queries, keys and values: all three packed in
    qkv, or queries and keys in qkv and the values in v."""
    if v is None:
        return _heads(qkv, 3, n_heads)
    return (*_heads(qkv, 2, n_heads), *_heads(v, 1, n_heads))


class _PackedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv: Tensor, v: Tensor | None, n_heads: int) -> Tensor:
        q, k, vh = _split(qkv, v, n_heads)
        B, H, n, Dh = q.shape
        z = q.new_empty(B, n, H * Dh)
        o = z.view(B, n, H, Dh).transpose(1, 2)
        lse = _kernel_forward(q, k, vh, o)
        ctx.save_for_backward(qkv, v, z, lse)
        ctx.n_heads = n_heads
        return z

    @staticmethod
    def backward(ctx, dz: Tensor):
        qkv, v, z, lse = ctx.saved_tensors
        H = ctx.n_heads
        q, k, vh = _split(qkv, v, H)
        B, _, n, Dh = q.shape
        # the gradients in the projections' own layout: nothing to stack or transpose after
        dqkv, dv = torch.empty_like(qkv), None if v is None else torch.empty_like(v)
        dq, dk, dvh = _split(dqkv, dv, H)
        o = z.view(B, n, H, Dh).transpose(1, 2)
        do = dz.reshape(B, n, H, Dh).transpose(1, 2)
        _kernel_backward((q, k, vh, o, lse), do, dq, dk, dvh)
        return dqkv, dv, None


def causal_attention_packed(qkv: Tensor, n_heads: int, v: Tensor | None = None) -> Tensor:
    """Causal attention on heads packed as the projections make them: qkv [batch, pos,
    3 * n_heads * d_head] (queries, keys, values, each n_heads blocks of d_head columns),
    or, with v [batch, pos, n_heads * d_head] given, qkv holds the queries and keys only
    ([batch, pos, 2 * n_heads * d_head]). -> z [batch, pos, n_heads * d_head], the heads'
    outputs side by side as W_O reads them. The same numbers as `causal_attention` on the
    views; with the kernel, the gradients are written straight into the packed layout."""
    q, k, vh = _split(qkv, v, n_heads)
    B, H, n, Dh = q.shape
    contiguous = qkv.is_contiguous() and (v is None or v.is_contiguous())
    if contiguous and _uses_kernel(q, k, vh):
        return _PackedAttention.apply(qkv, v, n_heads)
    z = causal_attention(q, k, vh)  # [B, H, n, Dh]
    return z.transpose(1, 2).reshape(B, n, H * Dh)
