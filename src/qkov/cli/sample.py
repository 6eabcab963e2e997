"""`qkov sample`: continue a prompt with a trained model."""

from __future__ import annotations

import argparse
import math

import torch


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sample",
        help="print text sampled from a model",
        description="Continue --prompt with a trained model.",
    )
    p.add_argument("dir", help="checkpoint directory")
    p.add_argument("--prompt", default="def ")
    p.add_argument("--tokens", type=int, default=64, help="how many tokens to generate")
    p.add_argument("--temperature", type=float, default=0.8, help="0: greedy")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from qkov.checkpoint import load
    from qkov.errors import QkovError
    from qkov.sampling import generate

    model = load(args.dir)
    if model.tokenizer is None:
        raise QkovError(f"{args.dir} has no tokenizer.json: cannot encode a text prompt")
    if args.tokens <= 0:
        raise QkovError(f"--tokens must be positive, got {args.tokens}")
    if math.isnan(args.temperature):
        raise QkovError("--temperature must be a number (0: greedy), got nan")
    if not 0 <= args.seed < 2**63:
        raise QkovError(f"--seed must be in [0, 2**63), got {args.seed}")
    try:
        args.prompt.encode("utf-8")
    except UnicodeEncodeError:  # bytes that are not UTF-8 reach argv as lone surrogates
        raise QkovError("--prompt is not valid UTF-8 text: pass UTF-8") from None
    ids = model.tokenizer.encode(args.prompt).ids
    if not ids:
        raise QkovError("--prompt encodes to no tokens: give some text")
    out = generate(model, torch.tensor(ids), args.tokens, args.temperature, args.seed)
    print(model.tokenizer.decode(out.tolist()))
    return 0
