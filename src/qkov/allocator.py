"""glibc's malloc: keep freed memory in the process during CPU training, give it back
during long analyses.

A training step allocates and frees the same large buffers every step (logit chunks,
attention outputs, gradients). glibc serves a large request with mmap, or trims the top of
its heap once enough is free, so the memory goes back to the kernel and the next step
faults it in again, page by page: measured on the 2-core CI machine at d_model 128 (L2,
V2048, ctx 128, batch 32), 5,600-7,700 minor page faults and 10-19 ms of kernel time per
~80 ms step; with the thresholds below, 0-154 faults and 0.5-3.6 ms. `keep_freed_memory` raises
both thresholds: requests up to 32 MB (glibc's ceiling for this setting on 64-bit) come
from the heap, and the heap is trimmed only past 1 GB free. The process keeps what a step
used at its peak, which the next step needs again anyway.

`qkov train` calls it when it trains on a CPU; elsewhere (not Linux with glibc) it does
nothing and says so by returning False.

Analysis wants the opposite. A per-head loop at 1B forms and frees d_vocab x d_head
products (8 MB each at TinyLlama's shape) for each of 704 heads; glibc keeps the freed ones
in its heap, fragmented, and the process grew by ~7 MB a head: the OV stage of `qkov
circuits` peaked at 14.2-15.5 GB over a 9.9 GB model and its fold (a full run at 11-17 GB,
run to run). `return_freed_memory` (malloc_trim) after each head gives the pages back:
9.95 GB, in the same time (104 s against 105 s).
"""

from __future__ import annotations

import ctypes
import platform

M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # the largest value glibc accepts for M_MMAP_THRESHOLD (64-bit)
TRIM_THRESHOLD = 1 << 30

_kept = False


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds (see the module docstring) for this process.
    Returns True once they are set (again: a no-op), False where the C library is not
    glibc or refuses them."""
    global _kept
    if _kept:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)  # the C library this process already runs on
        _kept = (
            libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
            and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
        )
    except (OSError, AttributeError):
        return False
    return _kept


def return_freed_memory() -> bool:
    """Give the free pages of glibc's heap back to the kernel (malloc_trim(0)); called after
    each head by the long per-head loops (see the module docstring). False where the C
    library is not glibc."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True
