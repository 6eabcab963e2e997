"""Synthetic token tasks for watching induction heads form (`--corpus repeated-random` or
`--corpus induction-task`).

Both draw from ids 1..d_vocab-1 (0 is the separator in text corpora) and, like the text
streams, give batches that are a pure function of (seed, step)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tokenizers import Tokenizer

from qkov.errors import QkovError

__all__ = ["SYNTHETIC_TASKS", "InductionTask", "RepeatedRandom"]


def _rng(seed: int, step: int) -> np.random.Generator:
    return np.random.default_rng([seed, step])


@dataclass
class RepeatedRandom:
    """Pure repeated random tokens: each row is [random filler][block][block] with the block
    length drawn per row in [L/4, L/2] (qkov.data.probes.induction_probe), so the repeat period
    varies: a head that attends a fixed offset back cannot solve it, only token matching
    (induction) can. A 2-layer model trained on this alone tends to stall at "copy any token
    seen before": see InductionTask."""

    d_vocab: int
    tokenizer: Tokenizer | None = None
    n_documents: int = 0
    skipped: int = 0

    def _make(self, seed: int, batch_size: int, n_ctx: int) -> torch.Tensor:
        from qkov.data.probes import induction_probe

        # The probe never draws prefix ids: [0] keeps the separator out.
        tokens = induction_probe(self.d_vocab, batch_size, n_ctx + 2, seed=seed, prefix=[0])
        return tokens.tokens[:, 1:]

    def train_batch(self, step: int, batch_size: int, n_ctx: int, seed: int) -> torch.Tensor:
        return self._make(int(_rng(seed, step).integers(2**62)), batch_size, n_ctx)

    def val_batches(self, batch_size: int, n_ctx: int, n_batches: int) -> list[torch.Tensor]:
        return [self._make(2**62 + i, batch_size, n_ctx) for i in range(n_batches)]


@dataclass
class InductionTask:
    """The synthetic task on which induction heads form in minutes on a CPU.

    Half of each batch are *repeat* rows: a random filler of f tokens, then a random block of
    h tokens repeated to the end of the row (h drawn in [L/8, L/2], f in [0, h], L = n_ctx+1),
    so after the first period every token is predictable by induction, whatever the period.
    The other half are *skip* rows: x[t+1] = perm[x[t-1]] with probability `skip_prob`
    (else a random token), for one fixed permutation `perm` of the ids.

    Why the skip rows: on repeated random tokens alone, a previous-token head is of no use
    by itself (the previous token says nothing about the next one); it pays only through the
    induction head that reads it, and the induction head only through it, a saddle where
    training lingers at "copy any token seen before". The skip rows reward a layer-0
    previous-token head directly, as text does in the paper, and the induction head then
    forms on top of it in a phase change."""

    d_vocab: int
    skip_prob: float = 0.8
    tokenizer: Tokenizer | None = None
    n_documents: int = 0
    skipped: int = 0

    def __post_init__(self) -> None:
        if self.d_vocab < 3:
            raise QkovError(f"induction-task needs --vocab-size >= 3, got {self.d_vocab}")
        ids = np.arange(1, self.d_vocab)
        self.perm = np.zeros(self.d_vocab, dtype=np.int64)
        self.perm[ids] = np.random.default_rng(0).permutation(ids)

    def repeat_rows(self, rng: np.random.Generator, n: int, length: int) -> np.ndarray:
        """[n, length] rows of [filler][block][block]...; (see the class docstring)."""
        if length < 4:
            raise QkovError(f"induction-task needs --n-ctx >= 3, got {length - 1}")
        out = np.empty((n, length), dtype=np.int64)
        lo, hi = max(2, length // 8), length // 2
        for i in range(n):
            h = int(rng.integers(lo, hi + 1))
            f = int(rng.integers(0, h + 1))
            drawn = rng.integers(1, self.d_vocab, size=f + h)
            reps = np.tile(drawn[f:], -(-length // h))
            out[i] = np.concatenate([drawn[:f], reps])[:length]
        return out

    def skip_rows(self, rng: np.random.Generator, n: int, length: int) -> np.ndarray:
        """[n, length] rows where x[t+1] = perm[x[t-1]] with probability skip_prob."""
        x = rng.integers(1, self.d_vocab, size=(n, length))
        keep = rng.random((n, length)) < self.skip_prob
        for t in range(2, length):
            x[:, t] = np.where(keep[:, t], self.perm[x[:, t - 2]], x[:, t])
        return x

    def _make(self, rng: np.random.Generator, batch_size: int, n_ctx: int) -> torch.Tensor:
        n_rep = (batch_size + 1) // 2
        rows = [self.repeat_rows(rng, n_rep, n_ctx + 1)]
        rows.append(self.skip_rows(rng, batch_size - n_rep, n_ctx + 1))
        return torch.from_numpy(np.concatenate(rows))

    def train_batch(self, step: int, batch_size: int, n_ctx: int, seed: int) -> torch.Tensor:
        """[batch, n_ctx + 1]: the first ceil(batch/2) rows repeat rows, the rest skip rows."""
        return self._make(_rng(seed, step), batch_size, n_ctx)

    def val_batches(self, batch_size: int, n_ctx: int, n_batches: int) -> list[torch.Tensor]:
        return [self._make(_rng(2**62, i), batch_size, n_ctx) for i in range(n_batches)]


SYNTHETIC_TASKS = {"repeated-random": RepeatedRandom, "induction-task": InductionTask}
