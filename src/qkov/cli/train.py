"""`qkov train`: train a transformer (attention-only by default) on a corpus into a run
directory.

The model and training flags are made from ModelConfig's and TrainConfig's fields
(qkov.cli.flags), so their defaults live only in those dataclasses."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from qkov.cli.flags import add_dataclass_flags, dataclass_values, given_flags
from qkov.config import ACT_FNS, NORMALIZATIONS, POSITIONAL_MODES, ModelConfig, TrainConfig
from qkov.errors import QkovError

MODEL_HELP = {
    "n_layers": "layers (0: a bigram model)",
    "n_heads": "heads per layer",
    "d_model": "width of the residual stream",
    "d_head": "width of each head (default: d_model / n_heads)",
    "n_ctx": "context length in tokens",
    "d_vocab": "BPE vocabulary size (= d_vocab of the model)",
    "positional": "shortformer: W_pos enters only queries and keys (the paper's); standard: "
    "added to the residual stream; none",
    "normalization": "pre-norm before attention, the MLP and the unembedding: none (the paper's "
    "analysed form), rms (weightless RMS norm), layernorm (learned weight and bias, GPT-2's) or "
    "rmsnorm (learned weight); layernorm and rmsnorm need --positional standard or none",
    "d_mlp": "width of each layer's MLP (0: attention-only, the paper's model)",
    "act_fn": "the MLP's activation (gelu_new: GPT-2's tanh approximation)",
    "bias": "give the model biases (b_Q, b_K, b_V, b_O, b_U; b_in, b_out with an MLP)",
    "rotary_dim": "with --positional rotary: rotated dims per head (default: d_head)",
    "rotary_base": "with --positional rotary: the base of the rotation frequencies",
    "parallel": "attention and MLP both read the layer's input (GPT-NeoX)",
    "n_kv_heads": "grouped-query attention: key/value heads (default: n_heads)",
    "gated_mlp": "gated MLP act(x W_gate) * (x W_in) (Llama)",
    "norm_eps": "eps of every norm",
    "init_std": "std of the initial weights (W_O is scaled by 1/sqrt(2 n_layers))",
    "pos_init_std": "std of the initial W_pos (default: --init-std); with --normalization rms "
    "the normalised stream has RMS 1, so a W_pos of std ~0.02 starts 50x weaker than tokens",
}
# --seed is TrainConfig's, and seeds both; rotary_scaling is read from checkpoints trained
# for longer contexts, which a new run has no reason to copy
MODEL_NOT_FLAGS = ("seed", "rotary_scaling")
TRAIN_HELP = {
    "corpus": "stdlib, induction-task, repeated-random, or text files/folders/globs",
    "batch_size": "sequences per step (the global batch under torchrun)",
    "lr": "peak learning rate of AdamW",
    "warmup": "steps of linear warmup",
    "min_lr_ratio": "the cosine schedule ends at this fraction of --lr (1: constant lr after "
    "warmup)",
    "weight_decay": "AdamW weight decay",
    "label_smoothing": "train on targets smoothed towards uniform, (1 - ε) onehot + ε / vocab "
    "(0: none); the losses logged stay the plain cross-entropy, the smoothed one beside "
    "them as train_smoothed_loss",
    "grad_clip": "clip the gradient norm to this",
    "eval_interval": "log train and held-out loss every N steps",
    "eval_batches": "held-out batches per evaluation",
    "ckpt_interval": "write a checkpoint every N steps",
    "probe_interval": "log induction / previous-token / ICL scores, the induction circuit's "
    "statistics and the repetition test's loss on each half every N steps (0: off)",
    "keep_checkpoints": "keep N weight snapshots in OUT/snapshots, geometrically spaced over the "
    "run (0: none); qkov.induction_circuit reads them",
    "seed": "seed of the initial weights and of the batches",
    "device": "cpu or cuda",
}
# Flags of TrainConfig fields written by hand below: steps has no default on --resume.
BY_HAND = ("steps", "init_from")
# TrainConfig fields --resume takes from the command line (see resume_config).
RESUME_TAKES = ("steps", "device")


def register(sub: argparse._SubParsersAction) -> None:

    p = sub.add_parser(
        "train",
        help="train a transformer (attention-only by default)",
        description="Train a transformer (attention-only by default: --d-mlp adds MLPs); "
        "checkpoints go to --out.",
    )
    m = p.add_argument_group(
        "model (with --resume the run's, with --init-from DIR's: give none, or the same values)"
    )
    add_dataclass_flags(
        m,
        ModelConfig,
        help=MODEL_HELP,
        flags={"d_vocab": "--vocab-size"},
        choices={
            "positional": POSITIONAL_MODES,
            "normalization": NORMALIZATIONS,
            "act_fn": ACT_FNS,
        },
        skip=MODEL_NOT_FLAGS,
    )
    t = p.add_argument_group("training")
    t.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"total steps (default: {TrainConfig.steps}); with --resume: more extends the run's "
        "schedule, fewer stops the run at that step (a checkpoint, its schedule kept)",
    )
    add_dataclass_flags(t, TrainConfig, help=TRAIN_HELP, skip=BY_HAND)
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument(
        "--init-from",
        metavar="DIR",
        default=None,
        help="start from the weights of this model directory (its config; a fresh optimizer "
        "and schedule): fine-tuning, or a second stage of training",
    )
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="print no progress on stderr (by default a bar on a terminal, else one line per "
        "--eval-interval)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from qkov.metrics import last_record
    from qkov.train import TrainingInterrupted, resume_config, train

    cfg, stop_after = None, None
    if args.resume:  # the run's own configs: only --steps and --device are taken
        tc = resume_config(args.out, args.steps, args.device)  # more --steps: a longer schedule
        _check_given_flags(args, tc)
        if args.steps is not None and args.steps < tc.steps:  # fewer: a stop on the way
            stop_after = args.steps
    else:
        from qkov.data.corpus import absolute_spec

        # Recorded absolute, so that the run's corpus is found again from any folder.
        args.corpus = absolute_spec(args.corpus)
        steps = {} if args.steps is None else {"steps": args.steps}
        values = dataclass_values(args, TrainConfig, skip=BY_HAND)
        tc = TrainConfig(**values, **steps, init_from=args.init_from)
        if args.init_from is None:  # else the config comes from --init-from
            cfg = ModelConfig(
                **dataclass_values(args, ModelConfig, skip=MODEL_NOT_FLAGS), seed=args.seed
            )
            _check_unused_flags(args, cfg)
        else:
            _check_given_flags(args, None)
    try:
        train(
            cfg,
            tc,
            args.out,
            resume=args.resume,
            stop_after=stop_after,
            progress=not args.no_progress,
        )
    except TrainingInterrupted as e:
        print(
            f"interrupted: checkpoint saved in {args.out}; continue with --resume", file=sys.stderr
        )
        return 128 + int(e.signum)  # the shell convention: 130 for SIGINT, 143 for SIGTERM
    last = last_record(Path(args.out) / "metrics.jsonl") or {}
    where = f" to step {stop_after} of its {tc.steps} (continue with --resume)"
    where = "" if stop_after is None else where
    print(f"trained {args.out}{where}: " + json.dumps(last))
    return 0


def _check_unused_flags(args: argparse.Namespace, cfg: ModelConfig) -> None:
    """A model flag the configuration gives nothing to do is refused, not ignored."""
    given = given_flags(args, ModelConfig)
    unused = {  # field: (the flag does nothing, how to make it do something)
        "act_fn": (cfg.d_mlp == 0, "without an MLP: add --d-mlp N"),
        "rotary_base": (cfg.positional != "rotary", "without --positional rotary: add it"),
        "norm_eps": (cfg.normalization == "none", "without a norm: add --normalization"),
        "pos_init_std": (
            cfg.positional in ("none", "rotary"),
            f"with --positional {cfg.positional} (no W_pos): use shortformer or standard",
        ),
    }
    for name, (idle, mend) in unused.items():
        if name in given and idle:
            raise QkovError(f"{given[name]} does nothing {mend}, or drop {given[name]}")


def _check_given_flags(args: argparse.Namespace, tc: TrainConfig | None) -> None:
    """With --resume (tc: the run's TrainConfig) or --init-from (tc None) the model's
    configuration is the run's or DIR's, and with --resume the training flags but --steps
    and --device are the run's: a flag given on the command line that says otherwise is
    refused (it would be ignored), one the same value is accepted."""
    from qkov.checkpoint import load

    given = {k: v for k, v in given_flags(args, ModelConfig).items() if k != "seed"}
    if tc is not None:  # --seed is TrainConfig's (it seeds the model of a new run too)
        given |= {k: v for k, v in given_flags(args, TrainConfig).items() if k not in RESUME_TAKES}
        if args.init_from is not None and args.init_from != tc.init_from:
            raise QkovError(
                f"--resume continues {args.out} from its own weights: drop --init-from "
                "(or start a new run from it with another --out)"
            )
    if not given:
        return
    if tc is None:
        where, mend = f"--init-from {args.init_from}", "the model comes from it"
        saved: dict = load(args.init_from).cfg.to_dict()
    else:
        where, mend = f"--resume of {args.out}", "the run continues as it was configured"
        saved = ModelConfig.load(Path(args.out) / "config.json").to_dict()
        saved |= dataclasses.asdict(tc)
    if "d_vocab" in given and args.d_vocab >= saved["d_vocab"]:
        del given["d_vocab"]  # the corpus's BPE may have learned fewer tokens than asked for
    wrong = [
        f"{flag} {_shown(getattr(args, name))} (it has {_shown(saved[name])})"
        for name, flag in given.items()
        if getattr(args, name) != saved[name]
    ]
    if wrong:
        raise QkovError(
            f"{where}: "
            + ", ".join(wrong)
            + f" would be ignored: {mend}; drop "
            + ("that flag" if len(wrong) == 1 else "those flags")
            + ("" if tc is None else ", or start a new run with another --out")
        )


def _shown(value: object) -> str:
    return "on" if value is True else "off" if value is False else str(value)
