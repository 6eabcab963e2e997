"""`qkov info`: config, parameter count and last metrics of a checkpoint directory."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info",
        help="describe a checkpoint directory",
        description="Print a checkpoint's config, parameter count, tokenizer and the last "
        "record of its metrics.jsonl. A Hugging Face folder is described from config.json and "
        "the file headers, checked as `qkov.load` checks it, without reading a weight.",
    )
    p.add_argument("dir", help="checkpoint directory")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from qkov.checkpoint import load, read_train_config, weights_step
    from qkov.config import TrainConfig
    from qkov.hf import is_hf_folder
    from qkov.metrics import METRICS, last_record
    from qkov.snapshots import list_snapshots

    if is_hf_folder(Path(args.dir)):
        return _hf_info(Path(args.dir))
    model = load(args.dir)
    cfg = model.cfg
    step = weights_step(args.dir)
    rows = _config_rows(cfg)
    rows.append(("params", f"{cfg.n_params:,}"))
    rows.append(("tokenizer", _tokenizer_text(model.tokenizer)))
    tc = read_train_config(args.dir) or {}
    recorded = TrainConfig.recorded(tc)
    if recorded is not None:
        rows.append(("trained", recorded.recipe(cfg.n_ctx)))
    if step is not None:
        rows.append(("weights", _weights_text(Path(args.dir), step, tc.get("steps"))))
    kept = list_snapshots(args.dir)
    if kept:
        rows.append(
            (
                "snapshots",
                f"{len(kept)} kept, steps {kept[0]:,} to {kept[-1]:,} (qkov forming reads them)",
            )
        )
    base = tc.get("init_from")
    if base:
        rows.append(("init_from", f"{base} (fine-tuned from its weights)"))
    print(args.dir)
    _print_rows(rows)
    last = last_record(Path(args.dir) / METRICS)
    if last is not None:
        older = step is not None and isinstance(last.get("step"), int) and last["step"] < step
        # a run stopped between two records: its weights are newer than its last metrics
        print(
            f"last record of {METRICS}" + (f" (the weights are of step {step:,})" if older else "")
        )
        _print_rows([(k, readable(k, v)) for k, v in last.items()])
    return 0


def _hf_info(path: Path) -> int:
    """A Hugging Face folder, from config.json and the file headers (`inspect_hf`)."""
    import torch

    from qkov.config import TRAINING_ONLY
    from qkov.hf import inspect_hf
    from qkov.resources import available_memory, size_str

    folder = inspect_hf(path)
    cfg = folder.cfg
    rows = _config_rows(cfg, skip=TRAINING_ONLY)
    rows.append(("params", f"{cfg.n_params:,}"))
    size = sum(f.stat().st_size for f in folder.files)
    n_files = len(folder.files)
    rows.append(
        (
            "stored",
            f"{', '.join(folder.stored_dtypes())} in {n_files} file{'s' * (n_files > 1)}, "
            f"{size_str(size)} (qkov.load upcasts to float32)",
        )
    )
    have = available_memory()
    rows.append(
        (
            "memory",
            f"{size_str(folder.load_bytes(torch.float32))} to load, at least "
            f"{size_str(folder.analysis_bytes())} to analyse"
            + (f" ({size_str(have)} available)" if have is not None else ""),
        )
    )
    rows.append(("tokenizer", _tokenizer_text(folder.tokenizer)))
    print(f"{path} (Hugging Face {folder.model_type} folder; no weight read)")
    _print_rows(rows)
    return 0


def _tokenizer_text(tok) -> str:
    """'32,000 tokens', and what it puts in front of every text (which the random-token
    tests put in front of every row: `qkov.data.tokenizer.start_ids`)."""
    if tok is None:
        return "none"
    from qkov.data.tokenizer import start_ids

    first = ", ".join(str(tok.id_to_token(i)) for i in start_ids(tok))
    return f"{tok.get_vocab_size():,} tokens" + (
        f", {first} in front of every text" if first else ""
    )


def _config_rows(cfg, skip: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """(field, value) of the ModelConfig's fields that act on its model (`acting_fields`:
    no rotary options where positions do not rotate); a nested value (rotary_scaling) as
    JSON spells it."""
    from qkov.config import acting_fields

    return [
        (k, json.dumps(v) if isinstance(v, dict) else str(v))
        for k, v in acting_fields(cfg.to_dict()).items()
        if k not in skip
    ]


def _print_rows(rows: list[tuple[str, str]]) -> None:
    """`key  value` rows, the values in one column."""
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")


def readable(key: str, value: object) -> str:
    """A metrics value in the units a reader wants: 65.5M tokens, 21.7k tokens/s, 3e-04,
    MFU as a percentage."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return json.dumps(value)
    if not math.isfinite(value):
        return str(value)
    if key == "step":
        return f"{value:,}"
    if key == "tokens":
        return _si(value)
    if key == "tokens_per_s":
        return f"{_si(value)} tokens/s"
    if key == "lr":
        return f"{value:.2e}"
    if key == "mfu":  # qkov.flops: the step's FLOPs over the measured matmul rate
        return f"{value:.1%} of the measured matmul peak"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.4f}" if abs(value) < 1000 else f"{value:,.0f}"


def _si(x: float) -> str:
    """65536000 -> 65.5M; 21685.3 -> 21.7k; 512 -> 512."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.1f}{suffix}"
    return f"{x:g}"


def _weights_text(run: Path, step: int, steps: object) -> str:
    """'of step 800 of 1,100 (qkov train --resume continues it)': the step of the weights,
    and where the run is short of its schedule's end, whether a process is training it now
    or its train state is kept to resume it."""
    from qkov.runlock import writer_pid
    from qkov.train_state import STATE

    if not isinstance(steps, int) or isinstance(steps, bool) or step >= steps:
        return f"of step {step:,}"
    if (run / "shipped.json").is_file():  # a shipped model: its run was stopped there
        return f"of step {step:,} of {steps:,} (stopped and shipped there: shipped.json)"
    pid = writer_pid(run)
    if pid is not None:
        more = f"process {pid} is training it now"
    else:
        more = "qkov train --resume continues it" if (run / STATE).is_file() else "no train state"
    return f"of step {step:,} of {steps:,} ({more})"
