"""`qkov analyze DIR [DIR ...] --out OUT`: analysis.json + a self-contained report.html."""

from __future__ import annotations

import argparse
import time


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "analyze",
        help="take checkpoints apart into circuits; write analysis.json and report.html",
        description="Analyse one or more checkpoint directories (the first is the main model; "
        "give the 0-, 1- and 2-layer models together to compare their losses) and write "
        "OUT/analysis.json and OUT/report.html, a single file that works offline.",
    )
    p.add_argument("dirs", nargs="+", metavar="DIR", help="checkpoint directories")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument(
        "--text-file",
        help="sample text for the attention views and the loss "
        "(default: a short repeated Python snippet)",
    )
    p.add_argument("--n-bigrams", type=int, default=20, help="rows of the bigram table")
    p.add_argument("--n-trigrams", type=int, default=8, help="skip-trigrams per head")
    p.add_argument("--seed", type=int, default=0, help="seed of the random probes")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from qkov.analyze import analyze, write_analysis
    from qkov.errors import QkovError

    text = None
    if args.text_file:
        try:
            text = Path(args.text_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise QkovError(f"cannot read --text-file {args.text_file} ({e})") from None
    if args.n_bigrams < 1 or args.n_trigrams < 1:
        raise QkovError("--n-bigrams and --n-trigrams must be at least 1")
    t0 = time.perf_counter()
    analysis = analyze(
        args.dirs, text=text, n_bigrams=args.n_bigrams, n_trigrams=args.n_trigrams, seed=args.seed
    )
    json_path, html_path = write_analysis(args.out, analysis)
    print(f"wrote {json_path} and {html_path} ({time.perf_counter() - t0:.1f}s)")
    return 0
