"""`qkov attribute DIR --text-file F` (or `--text "..."`): per position, the prediction, the
actual next token and the paths pushing its logit up and down (exact: they sum to the
logit)."""

from __future__ import annotations

import argparse
import json

from qkov.cli.flags import add_text_flags, given_text


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "attribute",
        help="per-token logit attribution of a text to paths (direct, heads, virtual heads)",
        description="Run the model on a text and, at every position, split the logit of the "
        "token that actually comes next into paths (the direct path, each head, each virtual "
        "head, biases and MLP outputs), with attention patterns, norm scales and MLP outputs "
        "frozen: the contributions sum exactly to the logit. A '*' marks a position whose "
        "prediction (argmax) is not the actual next token.",
    )
    p.add_argument("dir", help="checkpoint directory (config.json, model.safetensors, tokenizer)")
    add_text_flags(p, "the text to attribute (at most n_ctx tokens)", required=True)
    p.add_argument("-k", "--top-k", type=int, default=3, help="paths shown up and down per token")
    p.add_argument(
        "--max-order",
        type=int,
        default=None,
        help="paths through more heads than this are summed into one remainder path (default: "
        "none, or on a large model the cut that keeps the paths within qkov's budget, said so)",
    )
    p.add_argument(
        "--by-head",
        action="store_true",
        help="group the paths by the head that writes them into the stream (L0H0>L1H2 and "
        "L1H2 both count for L1H2): each head's whole contribution",
    )
    p.add_argument("--json", default=None, help="also write the attribution to this JSON file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from qkov.attribution import attribute_text
    from qkov.budget import attribution_max_order
    from qkov.checkpoint import check_folders, load
    from qkov.errors import QkovError
    from qkov.io import atomic_write_text, check_output_file

    if args.top_k < 1:
        raise QkovError(f"--top-k must be >= 1, got {args.top_k}")
    if args.max_order is not None and args.max_order < 0:
        raise QkovError(f"--max-order must be >= 0, got {args.max_order}")
    if args.json:
        check_output_file(args.json, "--json")
    flag = "--text-file" if args.text_file is not None else "--text"
    text, _ = given_text(args)
    check_folders([args.dir], text=f"{flag} cannot be encoded")
    model = load(args.dir, for_analysis=True)
    order, cut_note = args.max_order, ""
    if order is None:
        order = attribution_max_order(model.cfg, len(model.tokenizer.encode(text).ids))
        if order is not None:
            cut_note = (
                f"; paths through more than {order} heads summed into 'order>{order}' (the "
                "budget at this size; --max-order to choose)"
            )
    att = attribute_text(model, text, max_order=order)
    if args.by_head:
        att = att.by_head()
    what = "groups of paths by the head that writes them" if args.by_head else "paths"
    source = args.text_file or repr(_short(text))
    print(
        f"{args.dir} on {source}: {len(att.tokens)} tokens, {len(att.paths)} {what}; "
        f"logit of the actual next token split into paths (max |sum - logit| = "
        f"{att.max_abs_error():.1e}){cut_note}"
    )
    print("\n".join(att.lines(args.top_k)))
    if args.json:
        atomic_write_text(args.json, json.dumps(att.to_dict()) + "\n")
        print(f"\nwrote {args.json}")
    return 0


def _short(text: str, n: int = 40) -> str:
    """The text as the header names it: its first n characters."""
    return text if len(text) <= n else text[:n] + "..."
