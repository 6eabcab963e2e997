"""`qkov info`: config, parameter count and last metrics of a checkpoint directory."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="describe a checkpoint directory")
    p.add_argument("dir", help="checkpoint directory")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from qkov.checkpoint import load

    model = load(args.dir)
    cfg = model.cfg
    print(f"{args.dir}")
    for k, v in cfg.to_dict().items():
        print(f"  {k:<11} {v}")
    print(f"  {'params':<11} {cfg.n_params:,}")
    tok = model.tokenizer
    print(f"  {'tokenizer':<11} {tok.get_vocab_size() if tok else 'none'}")
    base = _init_from(Path(args.dir) / "train_config.json")
    if base:
        print(f"  {'init_from':<11} {base} (fine-tuned from its weights)")
    metrics = Path(args.dir) / "metrics.jsonl"
    if metrics.is_file():
        lines = [ln for ln in metrics.read_text(encoding="utf-8").splitlines() if ln.strip()]
        if lines:
            try:
                print("  last       " + json.dumps(json.loads(lines[-1])))
            except json.JSONDecodeError:
                print("  last        (metrics.jsonl ends in a torn line)")
    return 0


def _init_from(path: Path) -> str | None:
    """The run a checkpoint was fine-tuned from (`qkov train --init-from`), if any."""
    try:
        tc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return tc.get("init_from") if isinstance(tc, dict) else None
