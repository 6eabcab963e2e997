"""`qkov circuits DIR`: per-head OV copying statistics and top skip-trigrams."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "circuits",
        help="table of heads: OV copying statistics and top skip-trigrams",
        description="For every head: the eigenvalue copying score sum(lambda)/sum(|lambda|) "
        "of its OV circuit, the fraction of tokens it copies as top-1, and its top "
        "skip-trigrams read from the factored QK and OV circuits.",
    )
    p.add_argument("dir", help="checkpoint directory (config.json + model.safetensors)")
    p.add_argument("-k", "--top-k", type=int, default=10, help="skip-trigrams per head")
    p.add_argument(
        "--per-source",
        type=int,
        default=2,
        help="at most this many skip-trigrams per source token (0: no limit)",
    )
    p.add_argument("--bugs", type=int, default=3, help="factoring bugs shown per head")
    p.add_argument(
        "--chunk-size", type=int, default=None, help="vocab rows per dense chunk (memory bound)"
    )
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from qkov.checkpoint import load
    from qkov.circuits import ov_copying
    from qkov.cli import plural
    from qkov.errors import QkovError
    from qkov.io import atomic_write_text, check_output_file
    from qkov.trigrams import factoring_bugs, skip_trigrams

    if args.top_k < 1:
        raise QkovError(f"--top-k must be >= 1, got {args.top_k}")
    if args.per_source < 0:
        raise QkovError(f"--per-source must be >= 0 (0: no limit), got {args.per_source}")
    if args.bugs < 0:
        raise QkovError(f"--bugs must be >= 0, got {args.bugs}")
    if args.chunk_size is not None and args.chunk_size < 1:
        raise QkovError(f"--chunk-size must be >= 1, got {args.chunk_size}")
    if args.json is not None:
        check_output_file(args.json, "--json")  # before the work, not after it
    model = load(args.dir, device=args.device)
    cfg = model.cfg
    if cfg.n_layers == 0:
        raise QkovError(f"{args.dir} is a 0-layer model: it has no heads to take apart")
    print(
        f"{args.dir}: n_layers={cfg.n_layers} n_heads={cfg.n_heads} d_model={cfg.d_model} "
        f"d_vocab={cfg.d_vocab} positional={cfg.positional}"
    )
    heads = [(l, h) for l in range(cfg.n_layers) for h in range(cfg.n_heads)]
    copying = {lh: ov_copying(model, *lh, chunk_size=args.chunk_size) for lh in heads}
    print("\nhead   sum(l)/sum|l|   top-1 copying")
    for (l, h), c in copying.items():
        print(f"L{l}H{h:<3} {c.eigenvalue_score:+13.3f}   {c.top1_fraction:13.3f}")

    results = []
    for l, h in heads:
        trigrams = skip_trigrams(
            model,
            l,
            h,
            k=args.top_k,
            chunk_size=args.chunk_size,
            per_source=args.per_source or None,
        )
        note = " (direct path only)" if l > 0 else ""
        print(
            f"\nL{l}H{h} top {plural(len(trigrams), 'skip-trigram')}{note}: "
            "score = sigmoid(attention) * logit boost"
        )
        for i, t in enumerate(trigrams, 1):
            print(f"  {i:>2}. {t}   attn {t.attention:+.2f}  boost {t.boost:+.2f}")
        bugs = factoring_bugs(model, l, h, trigrams=trigrams)[: args.bugs]
        for b in bugs:
            print(f"  bug: {b.first} & {b.second}\n       => {b.crossed}")
        if args.bugs and not bugs:
            print(
                "  no factoring bug: no two of these skip-trigrams share a source token "
                "with different destinations and outs"
            )
        results.append(
            {
                **copying[(l, h)].to_dict(),
                "skip_trigrams": [t.to_dict() for t in trigrams],
                "factoring_bugs": [b.to_dict() for b in bugs],
            }
        )
    if args.json is not None:
        atomic_write_text(args.json, json.dumps({"heads": results}, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0
