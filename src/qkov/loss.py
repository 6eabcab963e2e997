"""Next-token loss: the one definition (`token_losses`, `next_token_loss`) and its fused
form for training (`unembed_cross_entropy`: `resid @ W_U` then cross-entropy, in chunks).

Contract everywhere: logits [batch, pos, d_vocab] and the tokens [batch, pos] they were
computed from; position i predicts token i + 1, so the loss is over tokens 1 .. pos-1.

The plain way materialises logits [tokens, d_vocab], then their log-softmax, then in the
backward pass a zero-filled gradient of the same size and a second softmax. Here the loss
is the last operation of the graph, so its gradient with respect to the logits,
softmax(logits) - onehot(target), is known in the forward pass: each chunk of tokens
computes its logits and their log-softmax once, turns that in place into the gradient
(the 1/n of the mean folded into the products that read it), and immediately
contracts it into the gradients of `resid` and `W_U`; backward only scales them by the
incoming gradient. Same matmuls, two passes over a small buffer instead of four over a big
one, and peak memory of one chunk of logits (d_vocab 50k, 16k tokens: 3 GB less).

Training on a CPU in float32 (both gradients, no b_U, torch built with MKL), the whole loop
is one C call (`qkov_unembed_xent` in qkov/kernels/softmax_xent.c): each thread takes its
own rows and runs the chunks of them through the three products on its own core (torch's
MKL, called single-threaded), so a chunk is made, read and contracted in that core's cache;
the threads' partial gradients of W_U are summed at the end (the training step 1.04x at
d_model 128, 1.05x at 256, interleaved). Elsewhere the loop below runs, and between the
two matmuls of a chunk there are four ways to form softmax - onehot and the loss: on a
CPU in float32, qkov's C kernel (the same file's row operation, each row in place, the loss
as log-sum-exp minus the target's logit); on a CPU otherwise (float64, no compiler),
PyTorch's softmax with a host-side check for probabilities too small for float32; on an
accelerator, log-softmax then exp (no host sync), and under autocast (without b_U) both
read the logits in bf16 and only the softmax's arithmetic is fp32 (`_low_precision_chunk`).
Tests run all of them against the plain loss.
"""

from __future__ import annotations

import ctypes

import torch
import torch.nn.functional as F
from torch import Tensor

from qkov import kernels
from qkov.errors import QkovError

__all__ = [
    "chunk_rows",
    "implementation",
    "next_token_loss",
    "target_logit_margin",
    "token_losses",
    "unembed_cross_entropy",
]

_kernel_enabled = True  # tests switch the C kernel off to reach PyTorch's CPU branch
_TINY_P = 1e-30  # below this a float32 probability loses digits (normal floats end at 1e-38)


def token_losses(logits: Tensor, tokens: Tensor) -> Tensor:
    """Loss of predicting each token from those before it: logits [batch, pos, d_vocab],
    tokens [batch, pos] -> [batch, pos - 1] (column t - 1 is token t), in fp32."""
    if tokens.shape[1] < 2:
        raise ValueError("a next-token loss needs sequences of at least 2 tokens")
    return F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), tokens[:, 1:], reduction="none")


def next_token_loss(logits: Tensor, tokens: Tensor) -> Tensor:
    """Mean next-token cross-entropy (nats/token): logits [batch, pos, d_vocab], tokens
    [batch, pos] -> scalar; `token_losses` averaged."""
    return token_losses(logits, tokens).mean()


def chunk_rows(d_vocab: int, budget: int = 1 << 21, max_rows: int | None = None) -> int:
    """Tokens per chunk: about `budget` logits (default 8 MB in fp32), at least 128 rows and
    at most max_rows (None: no cap)."""
    rows = max(128, budget // max(1, d_vocab))
    return rows if max_rows is None else min(rows, max_rows)


def host_sync_is_free(device: torch.device) -> bool:
    """Whether reading a device value on the host costs nothing (a CPU): the fused loss's
    CPU branch checks for underflow there; an accelerator's would stall its queue."""
    return device.type == "cpu"


def vocab_padding(d_vocab: int, device: torch.device) -> int:
    """Columns of zeros the fused loss appends to W_U (their logits set to -inf, so their
    gradient is 0): on a GPU, rows of an odd length (d_vocab 50257) push cuBLAS onto slow
    unaligned kernels (5x slower on an H200); a multiple of 64 gets the tensor cores'."""
    return (-d_vocab) % 64 if device.type == "cuda" else 0


def _softmax_xent(logits: Tensor, t: Tensor) -> ctypes.CDLL | None:
    """qkov's C kernel for a chunk of logits [rows, V] and its targets [rows] (qkov/kernels/
    softmax_xent.c) where it applies: float32 logits and int64 targets, contiguous, on a
    CPU, and buildable here; else None (PyTorch's ops)."""
    if logits.device.type != "cpu" or logits.dtype != torch.float32 or t.dtype != torch.int64:
        return None
    if not (logits.is_contiguous() and t.is_contiguous() and _kernel_enabled):
        return None
    return kernels.load("softmax_xent")


_PARTIAL_LIMIT = 64 << 20  # bytes of the other threads' partial grad_W_U, all together


def _why_not_whole(device: torch.device, dtype: torch.dtype, d_model: int, d_vocab: int) -> str:
    """Why the whole loss cannot run in qkov's C kernel here ("" where it can)."""
    if device.type != "cpu":
        return "not a CPU"
    if dtype != torch.float32:
        return f"{dtype} weights (the kernel is float32)"
    if not _kernel_enabled or kernels.load("softmax_xent") is None:
        return kernels.reason("softmax_xent") or "the kernel is switched off"
    if kernels.blas() is None:
        return "torch is not built with MKL"
    if (torch.get_num_threads() - 1) * d_model * d_vocab * 4 > _PARTIAL_LIMIT:
        return "each thread's partial grad_W_U would take too much memory"
    return ""


def implementation(d_model: int, d_vocab: int, b_U: bool, device: str | torch.device) -> str:
    """How a float32 training step computes the fused loss on this device, in words (what
    `qkov train` records in versions.json)."""
    device = torch.device(device)
    why = "the model has b_U" if b_U else _why_not_whole(device, torch.float32, d_model, d_vocab)
    if not why:
        return "qkov C kernel, the whole loss (softmax_xent.c; torch's MKL on each thread)"
    if device.type == "cpu" and _kernel_enabled and kernels.load("softmax_xent") is not None:
        return f"PyTorch matmuls in chunks, qkov C kernel for softmax - onehot ({why})"
    return f"PyTorch, in chunks ({why})"


def _whole_loss_kernel(x: Tensor, W_U: Tensor, t: Tensor, chunk: int) -> tuple[Tensor, ...] | None:
    """The whole loss and both gradients in qkov's C kernel (`qkov_unembed_xent` in
    softmax_xent.c: each thread its own rows, their logits made, turned into the gradient
    and contracted in its cache, blocks of `chunk` rows, torch's MKL for the products) where
    it applies (`_why_not_whole`: float32 on a CPU, torch built with MKL, the other threads'
    partial grad_W_U at most 64 MB together). Returns (summed loss, grad_x, grad_W_U of the
    mean loss) or None (the chunk loop runs instead)."""
    (n, D), V = x.shape, W_U.shape[1]
    if x.dtype != W_U.dtype or _why_not_whole(x.device, x.dtype, D, V):
        return None
    x, W_U, t = x.contiguous(), W_U.contiguous(), t.contiguous()
    losses, grad_x, grad_w = x.new_empty(n), x.new_empty(n, D), x.new_empty(D, V)  # float32
    ptr = kernels.pointer
    args = (ptr(x), ptr(W_U), ptr(t), ptr(losses), ptr(grad_x), ptr(grad_w))
    if kernels.load("softmax_xent").qkov_unembed_xent(n, D, V, *args, chunk, *kernels.blas()):
        raise MemoryError("unembed_cross_entropy: the kernel could not allocate its buffers")
    return losses.sum(), grad_x, grad_w


def _fp32_chunk(logits: Tensor, t: Tensor, grads: bool) -> tuple[Tensor, Tensor]:
    """A chunk's logits [rows, V] in fp32 (or fp64), targets [rows] -> (softmax - onehot,
    formed in place in `logits`: d(summed loss) / d logits; the chunk's summed loss)."""
    lib = _softmax_xent(logits, t)
    if lib is not None:
        # qkov's C kernel: per row in place, softmax - onehot, and the exact loss
        # log-sum-exp - logit (no probability's log: nothing underflows)
        losses = torch.empty(len(t), dtype=logits.dtype)
        ptr = kernels.pointer
        lib.qkov_softmax_xent(len(t), logits.shape[1], ptr(logits), ptr(t), ptr(losses))
        return logits, losses.sum()
    if host_sync_is_free(logits.device):
        # softmax is one pass per row, in cache (max, exp and sum, scale); -log p is the
        # loss, except where p(target) is too small for fp32 to hold it: those rows take
        # log-sum-exp of their logits. (The check is a host sync, free on a CPU; an
        # accelerator takes the branch below, which needs none.)
        p = torch.softmax(logits, dim=-1)
        p_target = p.gather(1, t[:, None])  # [rows, 1]
        losses = -p_target.log()
        tiny = p_target[:, 0] < _TINY_P
        if tiny.any():
            rows = tiny.nonzero()[:, 0]
            exact = logits[rows].logsumexp(-1) - logits[rows].gather(1, t[rows, None])[:, 0]
            losses[rows, 0] = exact
        return p.scatter_(1, t[:, None], p_target - 1.0), losses.sum()
    p = torch.log_softmax(logits, dim=-1)  # one pass per row: max, sum of exp, write
    picked = p.gather(1, t[:, None])  # [rows, 1] log p(target)
    if grads:
        p.exp_().scatter_(1, t[:, None], picked.exp() - 1.0)
    return p, -picked.sum()


def _low_precision_chunk(
    logits: Tensor, t: Tensor, acc: torch.dtype, grads: bool
) -> tuple[Tensor | None, Tensor]:
    """A chunk on an accelerator under autocast: logits [rows, V] in the matmuls' dtype
    (bf16), targets [rows]. Returns (softmax - onehot in that dtype, the operand both
    gradient matmuls read; None without grads) and the chunk's summed loss in `acc`. The
    loss is -log p(target) from a log-softmax that reads the bf16 logits and works in acc
    (fp32); the softmax also reads them directly. About 20 bytes of memory traffic per
    logit, against 44 for converting the logits to fp32 first (five passes over them)."""
    log_p = torch.log_softmax(logits, dim=-1, dtype=acc).gather(1, t[:, None])  # [rows, 1]
    if not grads:
        return None, -log_p.sum()
    # Accumulated in fp32, written in logits' dtype. The dtype is named because CUDA's
    # autocast runs softmax without one in fp32 (its fp32_set_opt_dtype ops; a CPU's does
    # not): a [rows, d_vocab] fp32 copy, and another pass to bring it back to bf16.
    g = torch.softmax(logits, dim=-1, dtype=logits.dtype)
    return g.scatter_(1, t[:, None], (log_p.exp() - 1.0).to(g.dtype)), -log_p.sum()


class _UnembedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        resid: Tensor,
        W_U: Tensor,
        b_U: Tensor | None,
        targets: Tensor,
        chunk: int,
        mm: torch.dtype | None,
    ) -> Tensor:
        n = resid.shape[0]
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = b_U is not None and ctx.needs_input_grad[2]
        training = need_x and need_w and b_U is None and mm is None  # (without b_U)
        whole = _whole_loss_kernel(resid, W_U, targets, chunk) if training else None
        if whole is not None:
            total, grad_x, grad_w = whole
            ctx.save_for_backward(grad_x, grad_w, None)
            return total / n
        grad_x = torch.empty_like(resid) if need_x else None
        acc = torch.promote_types(torch.promote_types(resid.dtype, W_U.dtype), torch.float32)
        D, V = W_U.shape
        W = W_U if mm is None else W_U.to(mm)  # the matmuls' operand (bf16 under autocast)
        pad = vocab_padding(V, W.device)
        W = F.pad(W, (0, pad)) if pad else W
        grad_w = torch.zeros(D, V + pad, dtype=acc, device=W_U.device) if need_w else None
        grad_b = torch.zeros(W_U.shape[-1], dtype=acc, device=W_U.device) if need_b else None
        total = torch.zeros((), dtype=acc, device=resid.device)
        grads = need_x or need_w or need_b
        for i in range(0, n, chunk):
            x, t = resid[i : i + chunk], targets[i : i + chunk]
            x = x if mm is None else x.to(mm)
            if mm is not None and b_U is None and not host_sync_is_free(W.device):
                # an accelerator under autocast: the logits stay in the matmuls' dtype
                logits = x @ W  # [chunk, d_vocab + pad]
                if pad:
                    logits[:, V:] = float("-inf")
                g, loss_sum = _low_precision_chunk(logits, t, acc, grads)
            else:
                logits = (x @ W).to(acc)  # [chunk, d_vocab]; the softmax is at least fp32
                if b_U is not None:
                    logits[:, :V] += b_U.to(acc)
                if pad:
                    logits[:, V:] = float("-inf")
                g, loss_sum = _fp32_chunk(logits, t, grads)
            total += loss_sum
            if grads:  # the 1 / n of the mean is applied to the small products, not to g
                g_mm = g if mm is None else g.to(mm)  # the matmuls' operand, made once
                if need_x and mm is None and resid.dtype == acc:  # written in place
                    torch.mm(g, W.T, out=grad_x[i : i + chunk]).mul_(1.0 / n)
                elif need_x:
                    gx = g_mm @ W.T  # [chunk, d_model]
                    grad_x[i : i + chunk] = gx.mul_(1.0 / n).to(resid.dtype)
                if need_w and mm is None:
                    grad_w.addmm_(x.T.to(acc), g, alpha=1.0 / n)
                elif need_w:  # low precision product, summed over chunks in fp32
                    grad_w.add_(x.T @ g_mm, alpha=1.0 / n)
                if need_b:
                    grad_b.add_(g[:, :V].sum(dim=0), alpha=1.0 / n)
        ctx.save_for_backward(
            grad_x,
            grad_w[:, :V].to(W_U.dtype, memory_format=torch.contiguous_format) if need_w else None,
            grad_b.to(b_U.dtype) if need_b else None,
        )
        return total / n

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        grad_x, grad_w, grad_b = ctx.saved_tensors
        return (
            grad_x * grad_out if grad_x is not None else None,
            grad_w * grad_out if grad_w is not None else None,
            grad_b * grad_out if grad_b is not None else None,
            None,
            None,
            None,
        )


def unembed_cross_entropy(
    resid: Tensor,
    W_U: Tensor,
    targets: Tensor,
    chunk: int | None = None,
    b_U: Tensor | None = None,
) -> Tensor:
    """Mean next-token cross-entropy of `resid @ W_U + b_U` against `targets`, fused (see
    module).

    resid [..., d_model], W_U [d_model, d_vocab], b_U [d_vocab] or None, targets [...] int
    -> scalar. Equals `F.cross_entropy((resid @ W_U + b_U).float().flatten(0, -2),
    targets.flatten())` and its gradients up to float rounding. Without gradients it is a
    chunked forward only. Under autocast the matmuls run in its dtype (bf16: the tensor
    cores' rate) and the softmax and all sums in fp32, as autocast runs linear + cross-entropy."""
    x = resid.reshape(-1, resid.shape[-1])
    t = targets.reshape(-1).long()
    if host_sync_is_free(t.device) and len(t):  # the C kernels index rows by target
        lo, hi = (int(v) for v in torch.aminmax(t))
        if lo < 0 or hi >= W_U.shape[-1]:
            raise QkovError(
                f"target id {hi if hi >= W_U.shape[-1] else lo} is out of range "
                f"[0, {W_U.shape[-1]}): targets are token ids of W_U's vocabulary"
            )
    # A CPU wants a chunk of logits near its caches (8 MB, and at most 512 rows: at d_vocab
    # 2048, 512 rows made a whole training step 1.07x faster than 1024, interleaved runs);
    # a GPU wants matmuls big enough for its tensor cores and few launches (512 MB: 2.7k
    # rows at d_vocab 50k).
    on_cpu = x.device.type == "cpu"
    chunk = chunk or chunk_rows(
        W_U.shape[-1], 1 << 21 if on_cpu else 1 << 27, 512 if on_cpu else None
    )
    acc = torch.promote_types(torch.promote_types(x.dtype, W_U.dtype), torch.float32)
    dev = x.device.type
    mm = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None
    grads = x.requires_grad or W_U.requires_grad or (b_U is not None and b_U.requires_grad)
    if not (torch.is_grad_enabled() and grads):
        with torch.no_grad():
            total = 0.0
            for i in range(0, len(t), chunk):
                logits = (x[i : i + chunk] @ W_U).to(acc)  # (autocast applies)
                logits = logits + b_U.to(acc) if b_U is not None else logits
                total += F.cross_entropy(logits, t[i : i + chunk], reduction="sum")
        return total / len(t)
    return _UnembedCrossEntropy.apply(x, W_U, b_U, t, chunk, mm)


def target_logit_margin(
    resid: Tensor, W_U: Tensor, targets: Tensor, b_U: Tensor | None = None
) -> Tensor:
    """Mean over tokens of the target's logit less the mean of all logits, z_t - mean(z):
    resid [..., d_model], W_U [d_model, d_vocab], targets [...] -> scalar (fp32 at least).

    Label smoothing's part of a loss: against targets smoothed towards uniform,
    (1 - ε) onehot + ε / d_vocab, the cross-entropy is -Σ q log p = lse - (1 - ε) z_t -
    ε mean(z) = (lse - z_t) + ε (z_t - mean(z)), so `unembed_cross_entropy + ε *
    target_logit_margin` is `F.cross_entropy(..., label_smoothing=ε)`. The term is linear in
    the logits: a gather of W_U's columns, and the logits are never materialised."""
    x = resid.reshape(-1, resid.shape[-1])
    t = targets.reshape(-1).long()
    acc = torch.promote_types(torch.promote_types(x.dtype, W_U.dtype), torch.float32)
    W = W_U.to(acc)
    margin = (x.to(acc) * (W.T[t] - W.mean(dim=1))).sum(dim=-1)  # [tokens]
    if b_U is not None:
        margin = margin + (b_U.to(acc)[t] - b_U.to(acc).mean())
    return margin.mean()
