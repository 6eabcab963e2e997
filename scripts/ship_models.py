"""Copy trained run directories into src/qkov/models/ (what `qkov demo` analyses).

Usage: python scripts/ship_models.py runs/attn0 runs/attn1 runs/attn2
Copies config.json, model.safetensors, tokenizer.json, train_config.json, versions.json and
metrics.jsonl (the optimizer state is left out: it is only needed to resume)."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

from safetensors import safe_open

FILES = ("config.json", "model.safetensors", "tokenizer.json", "train_config.json", "versions.json")
DEST = Path(__file__).resolve().parent.parent / "src" / "qkov" / "models"


def clean_metrics(text: str) -> str:
    """Strict JSON lines: runs from before the NaN filter wrote NaN for 0-layer probes."""
    out = []
    for line in text.splitlines():
        rec = json.loads(line)
        rec = {k: v for k, v in rec.items() if not (isinstance(v, float) and not math.isfinite(v))}
        out.append(json.dumps(rec))
    return "\n".join(out) + "\n"


def main(runs: list[str]) -> None:
    for run in map(Path, runs):
        dest = DEST / run.name
        dest.mkdir(parents=True, exist_ok=True)
        for name in FILES:
            shutil.copy2(run / name, dest / name)
        metrics = clean_metrics((run / "metrics.jsonl").read_text())
        with safe_open(str(run / "model.safetensors"), "pt") as f:
            step = int(f.metadata()["step"])  # the step these weights are from
        (dest / "metrics.jsonl").write_text(metrics)
        # The step the run stopped at: `qkov demo --train` stops there too (the schedule
        # in train_config.json may be longer; a run stopped early resumes exactly).
        (dest / "shipped.json").write_text(json.dumps({"step": step}) + "\n")
        print(f"shipped {run} -> {dest}")


if __name__ == "__main__":
    main(sys.argv[1:])
