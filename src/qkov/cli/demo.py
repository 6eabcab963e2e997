"""`qkov demo`: the whole paper on the shipped 0-, 1- and 2-layer models, one command.

The models in qkov/demo_models/ were trained by `qkov train` on the default corpus; each
folder's config.json and train_config.json are the exact record of how (see
qkov/demo_models/TRAINING.md). `--train` retrains them from those records instead."""

from __future__ import annotations

import argparse
import time


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="analyse the shipped 0/1/2-layer models and write the report",
        description="Analyse the models shipped with qkov (attention-only with 0, 1 and 2 "
        "layers, and 2 layers with MLPs, trained on the Python standard library) and write "
        "OUT/report.html and OUT/analysis.json. Losses and ICL scores are measured on the "
        "held-out documents of the standard library. With --train, retrain the models first "
        "(minutes each on a GPU with --device cuda; hours on a CPU).",
    )
    p.add_argument("--out", default="qkov-demo", help="output directory")
    p.add_argument(
        "--train",
        action="store_true",
        help="retrain the four models from their recorded configs into OUT/models",
    )
    p.add_argument("--device", default="cpu", help="device for --train (cpu or cuda)")
    p.add_argument(
        "--eval-seqs",
        type=int,
        default=256,
        help="at most this many held-out documents for the loss, ICL score and term importance",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from qkov.analyze import analyze, write_analysis
    from qkov.cli.analyze import summary
    from qkov.demo_models import NAMES, retrain, shipped
    from qkov.errors import QkovError
    from qkov.io import check_output_dir

    out = check_output_dir(args.out)
    if args.eval_seqs < 1:
        raise QkovError(f"--eval-seqs must be at least 1, got {args.eval_seqs}")
    t0 = time.perf_counter()
    dirs = retrain(out, args.device) if args.train else [shipped(n) for n in NAMES]
    analysis = analyze([str(d) for d in dirs], names=list(NAMES), max_sequences=args.eval_seqs)
    json_path, html_path = write_analysis(out, analysis)
    print(f"wrote {html_path} and {json_path} in {time.perf_counter() - t0:.0f}s")
    for line in summary(analysis):
        print(line)
    return 0
