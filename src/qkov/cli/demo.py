"""`qkov demo`: the whole paper on the shipped 0-, 1- and 2-layer models, one command.

The models in qkov/demo_models/ were trained by `qkov train` on the default corpus; each
folder's config.json and train_config.json are the exact record of how (see
qkov/demo_models/TRAINING.md). `--train` retrains them from those records instead."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from qkov.demo_models import DEMO_MODELS as SHIPPED
from qkov.demo_models import NAMES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="analyse the shipped 0/1/2-layer models and write the report",
        description="Analyse the attention-only models shipped with qkov (0, 1 and 2 "
        "layers, trained on the Python standard library) and write OUT/report.html and "
        "OUT/analysis.json. With --train, retrain them first (about an hour on a CPU).",
    )
    p.add_argument("--out", default="qkov-demo", help="output directory (default: qkov-demo)")
    p.add_argument(
        "--train",
        action="store_true",
        help="retrain the three models from their recorded configs into OUT/models",
    )
    p.add_argument("--device", default="cpu", help="device for --train (cpu or cuda)")
    p.add_argument(
        "--eval-seqs",
        type=int,
        default=16,
        help="held-out sequences for the loss and term importance",
    )
    p.set_defaults(func=run)


def shipped_dirs() -> list[Path]:
    from qkov.demo_models import shipped

    return [shipped(n) for n in NAMES]


def retrain(out: Path, device: str) -> list[Path]:
    """Train each shipped model again from its records (config.json, train_config.json,
    shipped.json; a model fine-tuned --init-from a base run has the base's in base/)."""
    dirs = []
    for name in NAMES:
        run_dir = out / "models" / name
        _retrain(SHIPPED / name, run_dir, device)
        dirs.append(run_dir)
    return dirs


def _retrain(record: Path, run_dir: Path, device: str) -> None:
    import dataclasses

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
    train(None if resume else cfg, tc, run_dir, resume=resume, stop_after=stop)


def run(args: argparse.Namespace) -> int:
    from qkov.analyze import analyze, write_analysis
    from qkov.checkpoint import load
    from qkov.data import heldout_tokens
    from qkov.errors import QkovError

    if args.eval_seqs < 1:
        raise QkovError(f"--eval-seqs must be at least 1, got {args.eval_seqs}")
    t0 = time.perf_counter()
    out = Path(args.out)
    dirs = retrain(out, args.device) if args.train else shipped_dirs()
    main = load(dirs[0])
    # One held-out batch for all three models (they share the tokenizer), so their
    # losses are comparable: documents of the stdlib the models never trained on.
    tokens = heldout_tokens(main.tokenizer, "stdlib", args.eval_seqs, main.cfg.n_ctx)
    analysis = analyze(
        [str(d) for d in dirs],
        names=list(NAMES),
        eval_tokens=tokens,
        eval_source="held-out documents of the Python standard library",
    )
    json_path, html_path = write_analysis(out, analysis)
    print(f"wrote {html_path} and {json_path} in {time.perf_counter() - t0:.0f}s")
    for rec in analysis["models"]:
        loss = rec["loss"]["value"]
        induction = [
            f"L{c['induction_head'][0]}H{c['induction_head'][1]} "
            f"(score {c['induction_score']:.2f}, K-composes with "
            f"L{c['previous_token_head'][0]}H{c['previous_token_head'][1]})"
            for c in rec.get("induction_circuits", [])
        ]
        line = f"  {rec['name']}: held-out loss {loss:.3f}"
        if induction:
            line += f"; induction heads {', '.join(induction)}"
        print(line)
    return 0
