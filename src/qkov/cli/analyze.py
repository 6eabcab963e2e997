"""`qkov analyze DIR [DIR ...] --out OUT`: analysis.json + a self-contained report.html."""

from __future__ import annotations

import argparse
import time

from qkov.cli.flags import (
    add_download_flag,
    add_text_flags,
    add_token_filter_flags,
    given_text,
    min_token_count,
    model_dirs,
)
from qkov.report.fmt import stderr_text


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "analyze",
        help="take checkpoints apart into circuits; write analysis.json and report.html",
        description="Analyse one or more checkpoint directories (the first is the main model; "
        "give the 0-, 1- and 2-layer models together to compare their losses) and write "
        "OUT/analysis.json and OUT/report.html, a single file that works offline. Loss, ICL "
        "score and term importance are measured on the evaluation set: --text or --text-file "
        "if given, else the held-out documents of each model's training corpus, else (a "
        "synthetic-task model) the random-token probe.",
    )
    p.add_argument(
        "dirs", nargs="+", metavar="DIR", help="checkpoint directories (hub ids with --download)"
    )
    p.add_argument("--out", required=True, help="output directory")
    add_text_flags(
        p,
        "evaluate on it and show it in the attention views (default: held-out documents of "
        "the training corpus; a short repeated Python snippet in the views)",
    )
    p.add_argument(
        "--eval-seqs", type=int, default=256, help="at most this many evaluation sequences"
    )
    p.add_argument("--n-bigrams", type=int, default=20, help="rows of the bigram table")
    p.add_argument("--n-trigrams", type=int, default=8, help="skip-trigrams per head")
    add_token_filter_flags(p)
    add_download_flag(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the random probes")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from qkov.analyze import analyze, write_analysis
    from qkov.errors import QkovError
    from qkov.io import check_output_dir

    check_output_dir(args.out)
    text, text_name = given_text(args) or (None, "")
    if args.n_bigrams < 1 or args.n_trigrams < 1 or args.eval_seqs < 1:
        raise QkovError("--n-bigrams, --n-trigrams and --eval-seqs must be at least 1")
    wanted = min_token_count(args)
    dirs = model_dirs(args, args.dirs)
    t0 = time.perf_counter()
    analysis = analyze(
        dirs,
        text=text,
        text_name=text_name,
        max_sequences=args.eval_seqs,
        n_bigrams=args.n_bigrams,
        n_trigrams=args.n_trigrams,
        min_token_count=wanted,
        seed=args.seed,
    )
    json_path, html_path = write_analysis(args.out, analysis)
    print(f"wrote {json_path} and {html_path} ({time.perf_counter() - t0:.1f}s)")
    for line in summary(analysis):
        print(line)
    return 0


def summary(analysis: dict) -> list[str]:
    """One line per model: its loss on the evaluation set (and how many tokens that is), its
    ICL score, its induction circuits."""
    lines = []
    for rec in analysis["models"]:
        ev, loss = rec["evaluation"], rec["loss"]
        line = (
            f"  {rec['name']}: loss {loss['value']:.3f} nats/token on {loss['n_tokens']:,} "
            f"tokens of {ev['description']}"
        )
        icl = rec.get("icl")
        if icl and icl.get("score") is not None:
            line += f"; ICL score {icl['score']:+.3f}{stderr_text(icl.get('stderr'))}"
        for c in rec.get("induction_circuits", []):
            (l1, h1), (l0, h0) = c["induction_head"], c["partner_head"]
            line += (
                f"; induction head L{l1}H{h1} (score {c['induction_score']:.2f}; partner "
                f"L{l0}H{h0}, K-composition z = {c['k_composition_z']:.1f}"
            )
            if c.get("knockout_head"):
                kl, kh = c["knockout_head"]
                line += f"; knocking out L{kl}H{kh} lowers its score by {c['knockout_drop']:.2f}"
            line += ")"
        lines.append(line)
    return lines
