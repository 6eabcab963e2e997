"""A training run's set-up: every check a run makes before it builds its model or writes a
file (output folder, resume, --init-from, device, memory, data), and the Run it settles."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from qkov import distributed
from qkov.checkpoint import TOKENIZER, load, load_tokenizer, read_json
from qkov.config import ModelConfig, TrainConfig
from qkov.errors import QkovError
from qkov.io import check_output_dir
from qkov.model import AttnOnlyTransformer
from qkov.resources import check_step_memory
from qkov.runlock import RunLock
from qkov.train_state import STATE


def check_device(device: str) -> None:
    """Refuse a device torch cannot use here with one clear line (not a torch traceback)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise QkovError(f"--device {device!r} is not a device: use cpu or cuda") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise QkovError(f"--device {device}: no CUDA GPU is available here; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise QkovError(f"--device {device}: only {torch.cuda.device_count()} GPU(s) here")
    elif dev.type != "cpu":
        raise QkovError(f"--device {device!r} is not supported: use cpu or cuda")


@dataclass
class Run:
    """What `prepare_run` settled: the run's directory, configs, data and place in a job."""

    out: Path
    cfg: ModelConfig
    tc: TrainConfig
    data: Any  # a TokenStream or a synthetic task
    dd: distributed.Dist
    val: list[torch.Tensor]  # the fixed held-out batches
    start: AttnOnlyTransformer | None  # the --init-from model
    resume: bool


def prepare_run(
    model_cfg: ModelConfig | None,
    tc: TrainConfig,
    out: Path,
    resume: bool,
    data: Any,
    lock: RunLock,
) -> Run:
    """Every check a run makes before it builds its model or writes a file, so a refused
    run leaves nothing behind: the output folder, the lock, resume or overwrite, --init-from,
    the device, the memory of a step, and whether the data can fill n_ctx."""
    from qkov.data import prepare

    check_output_dir(out)
    if distributed.launched_rank() == 0:
        lock.acquire()  # an existing directory: refuse at once if another process writes it
    if resume:
        model_cfg, tc = _check_resume(model_cfg, tc, out)
    elif (out / STATE).is_file():
        raise QkovError(
            f"{out} already holds a training run: pass --resume to continue it, "
            "or choose another --out"
        )
    start = None
    if tc.init_from is not None and not resume:
        start = _init_weights(tc.init_from, model_cfg)
        model_cfg = start.cfg
    if model_cfg is None:
        model_cfg = ModelConfig()
    check_device(tc.device)
    dd = distributed.setup(tc.device, tc.batch_size)  # torchrun: rank, world, device
    check_step_memory(model_cfg, tc.batch_size, dd.device, dd.world)  # before any allocation
    with distributed.main_first(dd):  # rank 0 fills the token cache, then the others read it
        data = data if data is not None else prepare(tc.corpus, model_cfg.d_vocab)
    model_cfg = _check_vocab(model_cfg, data, out, resume, start, tc.init_from)
    # Building the held-out batches checks that the data can fill n_ctx (too small a corpus,
    # too short a synthetic context) before anything is written.
    val = data.val_batches(tc.batch_size, model_cfg.n_ctx, tc.eval_batches)
    return Run(out, model_cfg, tc, data, dd, val, start, resume)


def resume_config(
    out_dir: str | Path, steps: int | None = None, device: str = "cpu"
) -> TrainConfig:
    """The TrainConfig that continues the run in `out_dir`: everything from its
    train_config.json, on `device`; `steps` extends its schedule (None or fewer: its own)."""
    out = Path(out_dir)
    if not (out / STATE).is_file():
        raise QkovError(f"cannot resume: {out / STATE} does not exist; start without --resume")
    saved_tc = read_json(out / "train_config.json")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    if not isinstance(saved_tc, dict) or not set(saved_tc) <= known or "steps" not in saved_tc:
        raise QkovError(
            f"{out / 'train_config.json'} is not a qkov TrainConfig (known keys: "
            f"{sorted(known)}): restore it from the run"
        )
    try:
        saved = TrainConfig(**saved_tc)
    except (TypeError, OverflowError) as e:  # a value of the wrong type: "lr": "fast"
        raise QkovError(
            f"{out / 'train_config.json'} has a bad value ({e}): restore it from the run"
        ) from None
    total = saved.steps if steps is None else max(steps, saved.steps)
    return dataclasses.replace(saved, steps=total, device=device)


def _check_resume(
    model_cfg: ModelConfig | None, tc: TrainConfig, out: Path
) -> tuple[ModelConfig, TrainConfig]:
    """The run's own configs; model flags that contradict them are refused."""
    tc = resume_config(out, tc.steps, tc.device)
    saved_cfg = ModelConfig.load(out / "config.json")
    if model_cfg is not None and model_cfg != saved_cfg:
        raise QkovError(
            f"--resume: the model flags disagree with {out / 'config.json'}: "
            "drop the model flags when resuming"
        )
    return saved_cfg, tc


def _check_vocab(
    cfg: ModelConfig,
    data: Any,
    out: Path,
    resume: bool,
    start: AttnOnlyTransformer | None,
    init_from: str | None,
) -> ModelConfig:
    """d_vocab from the corpus tokenizer; a resumed or --init-from model must match it."""
    if data.d_vocab != cfg.d_vocab:
        if resume:
            raise QkovError(
                f"corpus tokenizer has {data.d_vocab} tokens but {out} has "
                f"d_vocab={cfg.d_vocab}: resume with the same --corpus"
            )
        if start is not None:
            raise QkovError(
                f"--init-from {init_from} has d_vocab={cfg.d_vocab} but the corpus "
                f"tokenizer has {data.d_vocab} tokens: use the corpus and --vocab-size it was "
                "trained with"
            )
        cfg = dataclasses.replace(cfg, d_vocab=data.d_vocab)
    if start is not None and start.tokenizer is not None and data.tokenizer is not None:
        if start.tokenizer.get_vocab() != data.tokenizer.get_vocab():
            raise QkovError(
                f"--init-from {init_from} was trained with another tokenizer than this "
                "corpus's: use the corpus it was trained on"
            )
    saved = out / TOKENIZER
    if resume and data.tokenizer is not None and saved.is_file():
        # An edited corpus trains a new BPE (the token cache follows the content): the run
        # would go on with other token ids under the same weights, and overwrite its own.
        if load_tokenizer(saved).get_vocab() != data.tokenizer.get_vocab():
            raise QkovError(
                f"the corpus changed since {out} began: its tokenizer is not the run's "
                f"{saved}; restore the corpus, or train a new run on it with another --out"
            )
    return cfg


def _init_weights(path: str, model_cfg: ModelConfig | None) -> AttnOnlyTransformer:
    """The model a fine-tuning run starts from; its config is the run's config."""

    start = load(path)
    if model_cfg is not None and model_cfg != start.cfg:
        raise QkovError(
            f"--init-from {path} has config {start.cfg.to_dict()}, which the model flags "
            "contradict: drop the model flags (the config comes from --init-from)"
        )
    return start
