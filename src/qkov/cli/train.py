"""`qkov train`: train an attention-only model on a corpus into a run directory."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from qkov.config import NORMALIZATIONS, POSITIONAL_MODES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train an attention-only model",
        description="Train an attention-only transformer; checkpoints go to --out.",
    )
    m = p.add_argument_group("model (ignored with --resume and --init-from)")
    m.add_argument("--n-layers", type=int, default=2)
    m.add_argument("--n-heads", type=int, default=4)
    m.add_argument("--d-model", type=int, default=128)
    m.add_argument("--d-head", type=int, default=None, help="default: d_model / n_heads")
    m.add_argument("--n-ctx", type=int, default=256)
    m.add_argument(
        "--vocab-size", type=int, default=4096, help="BPE vocabulary size (= d_vocab of the model)"
    )
    m.add_argument("--positional", choices=POSITIONAL_MODES, default="shortformer")
    m.add_argument(
        "--normalization",
        choices=NORMALIZATIONS,
        default="none",
        help="none (the paper's analysed form) or rms: a weightless RMS norm on the inputs "
        "of the heads and the unembedding",
    )
    m.add_argument(
        "--init-std",
        type=float,
        default=None,
        help="std of the initial weights (default 0.02; W_O is scaled by 1/sqrt(2 n_layers))",
    )
    m.add_argument(
        "--pos-init-std",
        type=float,
        default=None,
        help="std of the initial W_pos (default: --init-std); with --normalization rms the "
        "normalised stream has RMS 1, so a W_pos of std ~0.02 starts 50x weaker than tokens",
    )
    t = p.add_argument_group("training")
    t.add_argument(
        "--corpus",
        default="stdlib",
        help="stdlib (default), induction-task, repeated-random, or text files/folders/globs",
    )
    t.add_argument(
        "--steps",
        type=int,
        default=None,
        help="total steps (default 1500; with --resume: the run's own, or more)",
    )
    t.add_argument("--batch-size", type=int, default=16)
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--warmup", type=int, default=100)
    t.add_argument(
        "--min-lr-ratio",
        type=float,
        default=0.1,
        help="the cosine schedule ends at this fraction of --lr (1: constant lr after warmup)",
    )
    t.add_argument("--weight-decay", type=float, default=0.01)
    t.add_argument("--grad-clip", type=float, default=1.0)
    t.add_argument("--eval-interval", type=int, default=100)
    t.add_argument("--ckpt-interval", type=int, default=250)
    t.add_argument(
        "--probe-interval",
        type=int,
        default=0,
        help="log induction / previous-token / ICL scores every N steps (0: off)",
    )
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument(
        "--init-from",
        metavar="DIR",
        default=None,
        help="start from the weights of this model directory (its config; a fresh optimizer "
        "and schedule): fine-tuning, or a second stage of training",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from qkov.config import ModelConfig
    from qkov.train import TrainConfig, TrainingInterrupted, train

    steps = args.steps
    if steps is None:  # --resume without --steps keeps the run's schedule (train takes the max)
        steps = 1 if args.resume else TrainConfig.steps
    tc = TrainConfig(
        corpus=args.corpus,
        steps=steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup=args.warmup,
        min_lr_ratio=args.min_lr_ratio,
        weight_decay=args.weight_decay,
        grad_clip=args.grad_clip,
        eval_interval=args.eval_interval,
        ckpt_interval=args.ckpt_interval,
        probe_interval=args.probe_interval,
        seed=args.seed,
        device=args.device,
        init_from=args.init_from,
    )
    cfg = None
    if not (args.resume or args.init_from):
        cfg = ModelConfig(
            n_layers=args.n_layers,
            n_heads=args.n_heads,
            d_model=args.d_model,
            d_head=args.d_head,
            n_ctx=args.n_ctx,
            d_vocab=args.vocab_size,
            positional=args.positional,
            normalization=args.normalization,
            seed=args.seed,
            **({} if args.init_std is None else {"init_std": args.init_std}),
            pos_init_std=args.pos_init_std,
        )
    try:
        train(cfg, tc, args.out, resume=args.resume, progress=not args.no_progress)
    except TrainingInterrupted as e:
        print(
            f"interrupted: checkpoint saved in {args.out}; continue with --resume", file=sys.stderr
        )
        return 128 + int(e.signum)  # the shell convention: 130 for SIGINT, 143 for SIGTERM
    last = _last_metrics(Path(args.out) / "metrics.jsonl")
    print(f"trained {args.out}: " + json.dumps(last))
    return 0


def _last_metrics(path: Path) -> dict:
    last: dict = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                last = json.loads(line)
            except json.JSONDecodeError:
                pass
    return last
