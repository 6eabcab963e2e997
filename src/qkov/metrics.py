"""metrics.jsonl, the training record of a run: one JSON object per logged step.

The one reader of that file (train, info, analyze and the report all come here). Each record
has "step" and "tokens" (tokens seen so far) and any of: train_loss, val_loss (both the
plain cross-entropy), train_smoothed_loss (the loss minimised with --label-smoothing), lr,
tokens_per_s, mfu (model FLOPs utilisation, qkov.flops), and the training probe's
probe_induction_score, probe_previous_token_score, probe_icl_score, ... and the repetition
test's repetition_* (see `qkov.training_probe`). A torn last line (a run killed
mid-write) is skipped. Imports no torch."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

METRICS = "metrics.jsonl"
# Bookkeeping fields, not drawn as training curves (the repetition test's block length, and
# its repeated-half loss over ln(d_vocab), drawn as the loss beside repetition_uniform_loss).
BOOKKEEPING = {
    "step",
    "tokens",
    "lr",
    "tokens_per_s",
    "mfu",
    "repetition_half_len",
    "repetition_repeated_fraction",
}
# Names written by runs before the training probe's keys said "probe": read as today's.
LEGACY_KEYS = {
    "induction_score": "probe_induction_score",
    "prev_token_score": "probe_previous_token_score",
    "icl_score": "probe_icl_score",
}


def read_records(path: str | Path, upto_step: int | None = None) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl (legacy keys renamed), in file order; those after
    `upto_step` are left out. A missing file has none."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line from a killed run
        step = rec.get("step") if isinstance(rec, dict) else None
        if isinstance(step, bool) or not isinstance(step, int):
            continue
        if upto_step is not None and step > upto_step:
            continue
        out.append({LEGACY_KEYS.get(k, k): v for k, v in rec.items()})
    return out


def last_record(path: str | Path) -> dict[str, Any] | None:
    """The last complete record of a metrics.jsonl, or None."""
    records = read_records(path)
    return records[-1] if records else None


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _tokens(rec: dict[str, Any]) -> float:
    """Tokens seen at a record (old records without "tokens" count steps instead)."""
    return rec["tokens"] if _number(rec.get("tokens")) else rec["step"]


def training_history(run_dir: str | Path) -> dict[str, Any] | None:
    """The training curves of a run: {"series": {name: [[tokens, value], ...]},
    "last_val_loss": {"value", "step", "tokens"} | None, "circuit_heads": {"induction_head",
    "partner_head"} | None (the heads of the last probe's induction-circuit statistics)},
    None without a metrics.jsonl.

    A run trained `--init-from` a base run whose record is in run_dir/base/ (a shipped
    two-stage model) continues the base's curves, its tokens counted on from the base's."""
    run_dir = Path(run_dir)
    records = read_records(run_dir / METRICS)
    base = training_history(run_dir / "base") if (run_dir / "base").is_dir() else None
    if not records and base is None:
        return None
    series: dict[str, list[list[float]]] = {}
    offset = 0.0
    if base is not None:
        series = {k: [list(p) for p in v] for k, v in base["series"].items()}
        offset = max((p[0] for v in base["series"].values() for p in v), default=0.0)
    last_val = base["last_val_loss"] if base is not None else None
    circuit = base.get("circuit_heads") if base is not None else None
    for rec in records:
        x = offset + _tokens(rec)
        for key, value in rec.items():
            if key not in BOOKKEEPING and _number(value):
                series.setdefault(key, []).append([x, value])
        if _number(rec.get("val_loss")):
            last_val = {"value": rec["val_loss"], "step": rec["step"], "tokens": x}
        if isinstance(rec.get("probe_induction_head"), str):
            circuit = {k: rec.get(f"probe_{k}") for k in ("induction_head", "partner_head")}
    return {"series": series, "last_val_loss": last_val, "circuit_heads": circuit}


def phase_change(history: dict[str, Any] | None, final_min: float = 0.3) -> dict[str, Any] | None:
    """Where the induction head formed, read off the training probe of `training_history`:
    {"tokens": [start, end]}, end the first point where probe_induction_score reaches half its
    final value, start the last point before it still below 0.1 (or the first point). None
    when the run has no probe series, its final score is below `final_min` (no head), or
    the first probe already reaches half of it (the change came before the first probe)."""
    points = ((history or {}).get("series") or {}).get("probe_induction_score") or []
    if not points or points[-1][1] < final_min:
        return None
    half = points[-1][1] / 2
    end = next(i for i, (_, v) in enumerate(points) if v >= half)
    if end == 0:  # the first probe already shows the head: it formed before, unseen
        return None
    start = max((i for i in range(end) if points[i][1] < 0.1), default=0)
    return {"tokens": [points[start][0], points[end][0]]}
