"""The in-context-learning score (Olsson et al. 2022): loss late in a context minus loss early
in it, per sequence, from one forward pass; negative when the context helps."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from qkov.errors import QkovError
from qkov.loss import token_losses
from qkov.model import AttnOnlyTransformer
from qkov.reprs import num


@dataclass(frozen=True)
class IclResult:
    """In-context learning score (Olsson et al. 2022): mean loss over a late window of token
    positions minus mean loss over an early window, per sequence, then averaged over the
    sequences with its standard error. Negative: later tokens are predicted better thanks to
    the context.

    Windows are [start, stop) ranges of token indices t (the loss of predicting token t from
    the tokens before it); loss_by_position[t - 1] is the batch-mean loss of token t."""

    score: float
    stderr: float  # standard error of the mean over sequences (NaN for one sequence)
    early: tuple[int, int]
    late: tuple[int, int]
    loss_early: float
    loss_late: float
    n_sequences: int
    loss_by_position: Tensor  # [pos - 1]

    def __repr__(self) -> str:
        spread = f" \u00b1 {num(self.stderr)}" if math.isfinite(self.stderr) else ""
        n = f"{self.n_sequences} sequence" + "s" * (self.n_sequences != 1)
        return (
            f"IclResult(score={num(self.score, '+.3f')}{spread} over {n}, "
            f"loss {num(self.loss_early)} at tokens {_span(self.early)} -> "
            f"{num(self.loss_late)} at {_span(self.late)})"
        )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["early"], d["late"] = list(self.early), list(self.late)
        d["loss_by_position"] = self.loss_by_position.tolist()
        return {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()
        }


def _span(window: tuple[int, int]) -> str:
    """'34-65' for the [start, stop) window (34, 66); '5' for (5, 6)."""
    a, b = window
    return str(a) if b - a == 1 else f"{a}-{b - 1}"


def icl_windows(seq_len: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The sequel's tokens 50 and 500 of a 512-token context, scaled to seq_len and widened
    to windows of w = max(1, seq_len // 16) tokens: the early window is centred on token
    seq_len * 50/512, the late one is the last w tokens. Returns ((a, b), (c, d)),
    1 <= a < b <= c < d = seq_len."""
    if seq_len < 3:
        raise QkovError(f"an ICL score needs sequences of at least 3 tokens, got {seq_len}")
    w = max(1, seq_len // 16)
    late = (seq_len - w, seq_len)
    start = min(max(1, round(seq_len * 50 / 512) - w // 2), late[0] - 1)
    return (start, min(start + w, late[0])), late


def icl_from_logits(
    logits: Tensor,
    tokens: Tensor,
    early: tuple[int, int] | None = None,
    late: tuple[int, int] | None = None,
) -> IclResult:
    """ICL score from a forward pass: logits [batch, pos, d_vocab], tokens [batch, pos];
    windows default to `icl_windows(pos)`."""
    return icl_from_losses(token_losses(logits.detach(), tokens), early, late)


def icl_from_losses(
    losses: Tensor,
    early: tuple[int, int] | None = None,
    late: tuple[int, int] | None = None,
) -> IclResult:
    """ICL score from the losses of a forward pass (`qkov.loss.token_losses`): losses
    [batch, pos - 1], column t - 1 the loss of token t; windows default to
    `icl_windows(pos)`."""
    loss = losses.detach().cpu().double()  # [batch, pos - 1]
    n = loss.shape[1] + 1
    e, lt = icl_windows(n)
    early, late = tuple(early or e), tuple(late or lt)
    if not (1 <= early[0] < early[1] <= n and 1 <= late[0] < late[1] <= n):
        raise QkovError(f"ICL windows must lie in [1, {n}), got {early} and {late}")
    lo_e = loss[:, early[0] - 1 : early[1] - 1].mean(1)  # [batch]
    lo_l = loss[:, late[0] - 1 : late[1] - 1].mean(1)  # [batch]
    diff = lo_l - lo_e
    B = diff.shape[0]
    stderr = float(diff.std() / math.sqrt(B)) if B > 1 else math.nan
    return IclResult(
        score=float(diff.mean()),
        stderr=stderr,
        early=early,
        late=late,
        loss_early=float(lo_e.mean()),
        loss_late=float(lo_l.mean()),
        n_sequences=B,
        loss_by_position=loss.mean(0).float(),
    )


@torch.no_grad()
def icl_score(
    model: AttnOnlyTransformer,
    tokens: Tensor,
    early: tuple[int, int] | None = None,
    late: tuple[int, int] | None = None,
) -> IclResult:
    """The ICL score of `model` on tokens [batch, pos] (held-out text: the evaluation set);
    see IclResult and `icl_windows`."""
    tokens = model.check_tokens(tokens)
    return icl_from_logits(model(tokens), tokens, early, late)
