"""`qkov sample`: continue a prompt with a trained model, printing the text as it comes."""

from __future__ import annotations

import argparse
import sys

from qkov.cli.flags import add_download_flag, model_dirs


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sample",
        help="print text sampled from a model",
        description="Continue --prompt with a trained model. The prompt's last token is "
        "re-chosen by the model (token healing: a prompt ending in a space reads as the "
        "start of the next word), unless --no-heal.",
    )
    p.add_argument("dir", help="checkpoint directory (a hub id with --download)")
    add_download_flag(p)
    p.add_argument("--prompt", default="def ", help="text to continue")
    p.add_argument("--tokens", type=int, default=64, help="how many tokens to generate")
    p.add_argument("--temperature", type=float, default=0.8, help="0: greedy")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampler, in [0, 2**63)")
    p.add_argument(
        "--no-heal",
        dest="heal",
        action="store_false",
        help="keep the prompt's last token as encoded",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from qkov.checkpoint import check_folders, load
    from qkov.sampling import sample_text

    (args.dir,) = model_dirs(args, [args.dir])
    check_folders([args.dir], text="--prompt cannot be encoded", for_analysis=False)
    model = load(args.dir)
    pieces = sample_text(model, args.prompt, args.tokens, args.temperature, args.seed, args.heal)
    for text in pieces:
        sys.stdout.write(text)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0
