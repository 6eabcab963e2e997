"""The models `qkov demo` analyses (attention-only with 0, 1 and 2 layers, and a 2-layer
model with MLPs), shipped inside the package (not to be confused with
qkov/model.py, the transformer itself): trained by `qkov train` on the Python standard
library; each folder holds the run's record (see TRAINING.md here). Imports no torch."""

from __future__ import annotations

from pathlib import Path

from qkov.errors import QkovError

DEMO_MODELS = Path(__file__).resolve().parent
NAMES = ("attn2", "attn1", "attn0", "mlp2")  # the main model first, as analyze expects


def shipped(name: str) -> Path:
    """The directory of a model shipped with qkov ("attn0", "attn1", "attn2" or "mlp2"), for
    `qkov.load(qkov.shipped("attn2"))` in examples and notebooks."""
    if name not in NAMES:
        raise QkovError(f"no shipped model {name!r}: use one of {', '.join(NAMES)}")
    path = DEMO_MODELS / name
    if not (path / "model.safetensors").is_file():
        raise QkovError(
            f"shipped model {name} is missing ({path / 'model.safetensors'}): reinstall "
            "qkov, or run `qkov demo --train` to train it"
        )
    return path


def retrain(out: str | Path, device: str = "cpu") -> list[Path]:
    """Train each shipped model again from its record into out/models/NAME (config.json,
    train_config.json and shipped.json, the step it was shipped at; a model trained
    `--init-from` a base run keeps the base's record in base/, trained first)."""
    dirs = []
    for name in NAMES:
        run_dir = Path(out) / "models" / name
        _retrain(DEMO_MODELS / name, run_dir, device)
        dirs.append(run_dir)
    return dirs


def _retrain(record: Path, run_dir: Path, device: str) -> None:
    import dataclasses
    import json

    from qkov.checkpoint import weights_step
    from qkov.config import ModelConfig
    from qkov.train import TrainConfig, train

    cfg = ModelConfig.load(record / "config.json")
    tc = TrainConfig(**json.loads((record / "train_config.json").read_text()))
    tc = dataclasses.replace(tc, device=device)
    if tc.init_from is not None:  # a second stage: first its base run, into run_dir/base
        _retrain(record / "base", run_dir / "base", device)
        tc = dataclasses.replace(tc, init_from=str(run_dir / "base"))
        cfg = None  # the config comes from the base run
    resume = (run_dir / "train_state.safetensors").is_file()
    # shipped.json: the step the shipped run stopped at (its schedule may be longer).
    stop = json.loads((record / "shipped.json").read_text())["step"]
    if resume and (weights_step(run_dir) or 0) >= stop:  # done: a rerun of `demo --train`
        return
    train(None if resume else cfg, tc, run_dir, resume=resume, stop_after=stop)
