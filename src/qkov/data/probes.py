"""Probe batches for the head detectors: seeded repeated random token sequences.

`induction_probe` (the standard one) varies the repeat period from row to row, so only a
head that matches tokens, not one attending a fixed offset back, finds the token after the
previous occurrence in every row. `repeated_random_tokens` is the classic fixed-period probe.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from qkov.errors import QkovError

__all__ = ["InductionProbe", "default_seq_len", "induction_probe", "repeated_random_tokens"]


def _pool(d_vocab: int, prefix: list[int]) -> Tensor:
    """Token ids a probe may draw: all but the prefix ids."""
    if any(not 0 <= t < d_vocab for t in prefix):
        raise QkovError(f"prefix {prefix} has ids outside [0, {d_vocab})")
    keep = torch.ones(d_vocab, dtype=torch.bool)
    keep[prefix] = False
    pool = keep.nonzero().squeeze(1)
    if len(pool) < 2:
        raise QkovError(f"d_vocab={d_vocab} leaves fewer than 2 tokens to draw a probe from")
    return pool


def _draw(pool: Tensor, n: int, g: torch.Generator) -> Tensor:
    """n ids from pool [n], without replacement when the pool is big enough."""
    if n <= len(pool):
        return pool[torch.randperm(len(pool), generator=g)[:n]]
    return pool[torch.randint(len(pool), (n,), generator=g)]


def repeated_random_tokens(
    d_vocab: int,
    batch: int = 16,
    half_len: int = 32,
    seed: int = 0,
    prefix: list[int] | tuple[int, ...] | None = None,
) -> Tensor:
    """A seeded batch of random sequences each followed by itself: [batch, p + 2*half_len].

    `prefix` (e.g. [bos_id]) is put in front of every row (p = len(prefix)); its ids are never
    drawn. Each half is drawn without replacement when the vocabulary allows it, so every
    second-half token has exactly one earlier occurrence. Every row has the same period, so
    a head attending a fixed offset back also scores here: `induction_probe` varies it."""
    prefix = list(prefix or [])
    if batch < 1 or half_len < 2:
        raise QkovError(f"probe needs batch >= 1 and half_len >= 2, got {batch} and {half_len}")
    pool, g = _pool(d_vocab, prefix), torch.Generator().manual_seed(seed)
    half = torch.stack([_draw(pool, half_len, g) for _ in range(batch)])
    head = torch.tensor(prefix, dtype=torch.long).expand(batch, len(prefix))
    return torch.cat([head, half, half], dim=1)


@dataclass(frozen=True)
class InductionProbe:
    """tokens [batch, seq_len]: each row is [prefix][random filler][block][block], the block
    of random length half_lens[b] in [L/4, L/2] (L = seq_len - len(prefix))."""

    tokens: Tensor
    half_lens: Tensor  # [batch]


def induction_probe(
    d_vocab: int,
    batch: int = 16,
    seq_len: int = 64,
    seed: int = 0,
    prefix: list[int] | tuple[int, ...] | None = None,
) -> InductionProbe:
    """The standard probe: repeated random blocks whose period varies from row to row, so
    only a head that matches tokens (not one attending a fixed offset back) finds the token
    after the previous occurrence in every row. Filler and block are drawn without
    replacement when the vocabulary allows it (then every match is the planted one)."""
    prefix = list(prefix or [])
    L = seq_len - len(prefix)
    if batch < 1 or L < 4:
        raise QkovError(f"probe needs batch >= 1 and >= 4 tokens after the prefix, got {L}")
    pool, g = _pool(d_vocab, prefix), torch.Generator().manual_seed(seed)
    lo, hi = max(2, -(-L // 4)), L // 2
    halves = torch.randint(lo, hi + 1, (batch,), generator=g)
    rows = []
    for h in halves.tolist():
        drawn = _draw(pool, L - h, g)  # filler (L - 2h) then block (h)
        rows.append(torch.cat([torch.tensor(prefix, dtype=torch.long), drawn, drawn[L - 2 * h :]]))
    return InductionProbe(torch.stack(rows), halves)


def default_seq_len(n_ctx: int, cap: int = 128) -> int:
    """The probe's length for a context of n_ctx: min(cap, n_ctx)."""
    if n_ctx < 4:
        raise QkovError(f"n_ctx={n_ctx} is too short for a repeated-token probe (needs >= 4)")
    return min(cap, n_ctx)
