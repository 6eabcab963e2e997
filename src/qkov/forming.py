"""The induction circuit along training: the training probe's record (`qkov.training_probe`)
at each checkpoint, so the phase change can be read from weights a researcher already has.

The checkpoints are a run's snapshots (`qkov train --keep-checkpoints N`) and its final
weights, or checkpoint folders given in training order (a model's published training
checkpoints saved locally, e.g. Pythia's revisions, each a Hugging Face folder whose step is
read from a name like "pythia-70m-step1000"). At a snapshot's step the record equals what
the training probe logged there (tested): the same fixed random-token probe, the same
weight statistics of the circuit (best induction head, its partner, the QK term's and the
OV circuit's Sum(lambda)/Sum(|lambda|)).

The training probe includes the peers' repetition test (`qkov.repetition.repetition_record`:
10 sequences of random tokens, a block of 50 repeated once, or n_ctx / 2): the best two
induction heads and the loss on each half (the in-context learning that the induction heads
buy, read as a loss, beside the uniform ln(d_vocab)); with `repetition_seeds` its means
over several seeds, as TRAINING.md's tables give them.

The circuit is the best induction head's at each checkpoint, or one pair of heads followed
through all of them (`head`, `partner`): before the phase change the best head is noise.
"""

from __future__ import annotations

import gc
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qkov.checkpoint import folder_size, load, weights_step
from qkov.errors import QkovError
from qkov.induction_circuit import Head, check_pinned
from qkov.model import Transformer
from qkov.repetition import repetition_record
from qkov.snapshots import list_snapshots, load_snapshot
from qkov.training_probe import training_probe

_STEP_NAME = re.compile(r"step[-_]?(\d+)", re.IGNORECASE)
# what must agree between checkpoints of one training run
SHAPE = ("n_layers", "n_heads", "d_model", "d_head", "d_vocab", "n_ctx")


@dataclass(frozen=True)
class Checkpoint:
    """One point of training: its name in the table, its step where known, how to load it."""

    name: str  # "step 1,234" for a snapshot, else the folder's name
    step: int | None
    load: Callable[[], Transformer]


def checkpoints(dirs: list[str | Path]) -> list[Checkpoint]:
    """One folder: a qkov run's snapshots, then its final weights (refused without
    snapshots). Several: each folder, in the order given. Every folder's config is read
    (no weights) and must describe the same shape (`SHAPE`), else one QkovError line."""
    paths = [Path(d) for d in dirs]
    if not paths:
        raise QkovError("no checkpoints: give a run kept with --keep-checkpoints N, or folders")
    configs = [folder_size(p).cfg for p in paths]
    for p, cfg in zip(paths[1:], configs[1:], strict=True):
        differ = [k for k in SHAPE if getattr(cfg, k) != getattr(configs[0], k)]
        if differ:
            k = differ[0]
            raise QkovError(
                f"{p} has {k}={getattr(cfg, k)} but {paths[0]} has {k}="
                f"{getattr(configs[0], k)}: give checkpoints of one training run"
            )
    if len(paths) > 1:
        return [Checkpoint(p.name, _step(p), lambda p=p: load(p, for_analysis=True)) for p in paths]
    run = paths[0]
    steps = list_snapshots(run)
    if not steps:
        raise QkovError(
            f"{run} has no snapshots: train it with --keep-checkpoints N, or give several "
            "checkpoint folders in training order"
        )
    out = [Checkpoint(f"step {s:,}", s, lambda s=s: load_snapshot(run, s)) for s in steps]
    final = weights_step(run)
    if final is None or final not in steps:  # the run's own weights, unless a snapshot
        name = "final" if final is None else f"step {final:,}"
        # in its place by step: a run still training has snapshots after its checkpoint
        at = len(out) if final is None else sum(s < final for s in steps)
        out.insert(at, Checkpoint(name, final, lambda: load(run, for_analysis=True)))
    return out


def circuit_along(
    dirs: list[str | Path],
    seed: int = 0,
    log: Callable[[str], None] | None = None,
    repetition_seeds: int = 1,
    head: Head | None = None,
    partner: Head | None = None,
) -> list[dict[str, Any]]:
    """`training_probe` at each of `checkpoints(dirs)`, in order: a record per checkpoint
    with its "checkpoint" name and "step" (None where unknown). One model is in memory at
    a time (a series of 1B checkpoints needs one's memory). log: a line per checkpoint.
    repetition_seeds > 1: the repetition test's keys are means over that many seeds from
    `seed` (`repetition_record`); training logs one. head, partner: the circuit's heads,
    the same at every checkpoint (`qkov.induction_circuit`), checked before any is loaded."""
    if repetition_seeds < 1:
        raise QkovError(f"--repetition-seeds must be at least 1, got {repetition_seeds}")
    say = log or (lambda line: None)
    found = checkpoints(dirs)
    check_pinned(folder_size(Path(dirs[0])).cfg, head, partner)
    rows = []
    for i, c in enumerate(found):
        say(f"{c.name} ({i + 1} of {len(found)})")
        model = c.load().eval()
        rec = training_probe(model, seed, repetition_seeds == 1, head, partner)
        if repetition_seeds > 1:
            rec |= repetition_record(model, seed, repetition_seeds)
        rows.append({"checkpoint": c.name, "step": c.step, **rec})
        del model
        gc.collect()
    return rows


def _step(path: Path) -> int | None:
    """A folder's training step: a qkov checkpoint's own record, else a step named in the
    folder's name as Pythia's revisions are (step1000, step-1000, step_1000), else None."""
    step = weights_step(path)
    if step is not None:
        return step
    found = _STEP_NAME.search(path.name)
    return int(found.group(1)) if found else None
