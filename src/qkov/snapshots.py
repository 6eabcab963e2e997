"""Weight snapshots kept during training (`qkov train --keep-checkpoints N`).

A run's checkpoint (model.safetensors + train_state.safetensors) is overwritten as training
goes on; snapshots are kept: N copies of the weights alone, at steps spaced geometrically
from 1% of the run to its end (a phase change happens early, so early steps are denser).
They live in RUN/snapshots/step-00001234.safetensors; the run's config.json describes them."""

from __future__ import annotations

import re
from pathlib import Path

from qkov.checkpoint import CONFIG, TOKENIZER, load_safetensors, load_tokenizer
from qkov.config import ModelConfig
from qkov.errors import QkovError
from qkov.io import atomic_save_safetensors
from qkov.model import Transformer
from qkov.weights import check_weight_shapes

FOLDER = "snapshots"
_NAME = re.compile(r"step-(\d{8})\.safetensors")


def snapshot_steps(total: int, n: int) -> list[int]:
    """The steps at which a run of `total` steps keeps its n snapshots: geometrically
    spaced from max(1, total // 100) to total (fewer if steps coincide), always ending at
    total. n = 0: none."""
    if n <= 0 or total <= 0:
        return []
    first = max(1, total // 100)
    if n == 1 or first == total:
        return [total]
    ratio = (total / first) ** (1 / (n - 1))
    steps = {min(total, round(first * ratio**i)) for i in range(n)}
    steps.add(total)
    return sorted(steps)


def snapshot_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / FOLDER / f"step-{step:08d}.safetensors"


def save_snapshot(run_dir: str | Path, model: Transformer, step: int) -> None:
    """Write the weights of `model` at `step` (atomically)."""
    path = snapshot_path(run_dir, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_safetensors(path, model.weights(), metadata={"format": "qkov", "step": str(step)})


def list_snapshots(run_dir: str | Path) -> list[int]:
    """The steps of the snapshots kept in `run_dir`, in order."""
    folder = Path(run_dir) / FOLDER
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := _NAME.fullmatch(p.name)))


def load_snapshot(run_dir: str | Path, step: int) -> Transformer:
    """The model of `run_dir` with its weights at snapshot `step` (tokenizer included)."""
    run = Path(run_dir)
    path = snapshot_path(run, step)
    if not path.is_file():
        kept = list_snapshots(run)
        raise QkovError(
            f"{run} has no snapshot at step {step} (kept: {kept or 'none'}): train with "
            "--keep-checkpoints N to keep snapshots"
        )
    cfg = ModelConfig.load(run / CONFIG)
    weights = load_safetensors(path)
    check_weight_shapes(cfg, weights, str(path))
    model = Transformer.empty(cfg)  # every weight is then written
    model.load_weights(weights, source=str(path))
    if (run / TOKENIZER).is_file():
        model.tokenizer = load_tokenizer(run / TOKENIZER)
    return model
