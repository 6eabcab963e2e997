"""`qkov forming`: the induction circuit at each checkpoint of a training run."""

from __future__ import annotations

import argparse
import json
import sys

COLUMNS = (  # (header, record key, format)
    ("induction", "probe_induction_score", ".3f"),
    ("prev-token", "probe_previous_token_score", ".3f"),
    ("prev head", "probe_previous_token_head", ""),
    ("ICL (probe)", "probe_icl_score", "+.3f"),
    ("induction head", "probe_induction_head", ""),
    ("its score", "probe_induction_head_score", ".3f"),  # with --head only
    ("partner", "probe_partner_head", ""),
    ("K-comp", "probe_k_composition", ".3f"),
    ("QK eig", "probe_qk_eigenvalue", "+.3f"),
    ("OV eig", "probe_ov_eigenvalue", "+.3f"),
    ("repetition: best", "repetition_induction_score", ".3f"),
    ("2nd", "repetition_second_score", ".3f"),
    ("first half", "repetition_first_half_loss", ".2f"),
    ("repeated half", "repetition_repeated_half_loss", ".2f"),
    ("/ uniform", "repetition_repeated_fraction", ".0%"),
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "forming",
        help="the induction circuit at each checkpoint of a training run (the phase change)",
        description="The training probe at each checkpoint, in training order: a run's "
        "snapshots (qkov train --keep-checkpoints N) and its final weights, or several "
        "checkpoint folders (e.g. a model's training checkpoints saved locally). Per "
        "checkpoint: the best "
        "induction and previous-token scores and the ICL score on the fixed random-token "
        "probe, the best induction head, its partner (of the earlier heads above the random "
        "K-composition baseline, the previous-token heads if any, the one its key reads "
        "most), and the weight statistics of the circuit (K-composition, the induction QK "
        "term's and the OV circuit's sum(lambda)/sum(|lambda|)). At a snapshot's step these "
        "equal what training logged in metrics.jsonl. Then the repetition test (10 sequences "
        "of random tokens, a block of 50 repeated once): the best two induction scores and "
        "the loss on each half, in nats and the repeated half's as a fraction of the uniform "
        "ln(d_vocab); with --repetition-seeds N, their means over N seeds.",
    )
    p.add_argument("dirs", nargs="+", metavar="DIR", help="a run, or checkpoint folders in order")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the probe (training logs seed 0) and of the repetition test's tokens",
    )
    p.add_argument(
        "--repetition-seeds",
        type=int,
        default=1,
        metavar="N",
        help="the repetition test's scores and losses as the mean over seeds SEED .. SEED+N-1, "
        "the heads ranked by their mean (default 1: what training logs)",
    )
    p.add_argument(
        "--head",
        default=None,
        metavar="LxHy",
        help="follow this induction head (e.g. L1H5) at every checkpoint, as the sequel paper "
        "does, instead of each checkpoint's best head (before the phase change that is noise); "
        "the table adds its own probe score",
    )
    p.add_argument(
        "--partner",
        default=None,
        metavar="LxHy",
        help="with --head: its partner, an earlier head (e.g. L0H7), at every checkpoint "
        "(default: chosen at each checkpoint as without --head)",
    )
    p.add_argument("--json", default=None, help="also write the records to this JSON file")
    p.add_argument(
        "--html",
        default=None,
        help="also draw them: a self-contained page (charts over training, then the table)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from qkov.cli.flags import parse_head
    from qkov.forming import circuit_along
    from qkov.io import atomic_write_text, check_output_file, json_safe
    from qkov.progress import Stages

    head = parse_head(args.head, "--head") if args.head else None
    partner = parse_head(args.partner, "--partner") if args.partner else None
    if args.json:
        check_output_file(args.json, "--json")
    if args.html:
        check_output_file(args.html, "--html")
    stage = Stages("qkov forming", lambda line: print(line, file=sys.stderr, flush=True))
    rows = circuit_along(
        args.dirs, args.seed, stage, args.repetition_seeds, head=head, partner=partner
    )
    pinned = pinned_line(head, partner)
    if pinned:
        print(pinned)
    if args.repetition_seeds > 1:
        last = args.seed + args.repetition_seeds - 1
        print(f"repetition test: the mean of seeds {args.seed} to {last}")
    print(table(rows))
    written = []
    if args.json:
        atomic_write_text(args.json, json.dumps(json_safe(rows), indent=1) + "\n")
        written.append(args.json)
    if args.html:
        from qkov.report.forming import forming_page

        atomic_write_text(args.html, forming_page(rows, " ".join(args.dirs), pinned))
        written.append(args.html)
    if written:
        print()
        for w in written:
            print(f"wrote {w}")
    return 0


def pinned_line(head: tuple[int, int] | None, partner: tuple[int, int] | None) -> str | None:
    """What --head and --partner fixed, as the table and the page say it."""
    if head is None:
        return None
    chosen = (
        f"its partner L{partner[0]}H{partner[1]}"
        if partner
        else "its partner chosen at each checkpoint"
    )
    return f"the circuit of L{head[0]}H{head[1]} (--head) at every checkpoint, with {chosen}"


def table(rows: list[dict]) -> str:
    """The records as a text table, a row per checkpoint; a column no record has is left
    out (the pinned head's own score, without --head)."""
    columns = [c for c in COLUMNS if any(c[1] in r for r in rows)]
    head = ["checkpoint", *(h for h, _, _ in columns)]
    body = [[r["checkpoint"], *(_cell(r.get(k), f) for _, k, f in columns)] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    lines = [
        "  ".join(
            x.ljust(w) if i == 0 else x.rjust(w)
            for i, (x, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in [head, *body]
    ]
    return "\n".join(line.rstrip() for line in lines)


def _cell(value: object, fmt: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "-" if value != value else format(value, fmt)
    return str(value)
