"""How often copying is right in a corpus: the statistic an induction head is trained on.

    python scripts/corpus_copying.py                    # the default corpus, 2,048 tokens
    python scripts/corpus_copying.py --vocab-size 8192  # (tokenizes it first if not cached)

At each position of the training token stream whose token occurred before within --window
tokens, the induction guess for the next token is the token that followed its most recent
earlier occurrence ([a][b] ... [a] -> [b]). This prints how many positions have such a
guess, how often it is right, and both by the guessed token's training count (the bins of
`qkov.repetition.loss_by_count`, whose lift a model's copy shows on random tokens). Used in
src/qkov/demo_models/TRAINING.md ("Which tokens the repeated half costs").
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def previous_occurrence(tokens: np.ndarray) -> np.ndarray:
    """[n] int64: the position of each token's most recent earlier occurrence, -1 if none."""
    order = np.argsort(tokens, kind="stable")  # grouped by token, positions ascending within
    prev = np.full(len(tokens), -1, dtype=np.int64)
    same = tokens[order[1:]] == tokens[order[:-1]]
    prev[order[1:][same]] = order[:-1][same]
    return prev


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default="stdlib")
    ap.add_argument("--vocab-size", type=int, default=2048)
    ap.add_argument("--window", type=int, default=512, help="the model's n_ctx (default 512)")
    args = ap.parse_args()
    if args.window < 1:
        ap.error(f"--window must be at least 1, got {args.window}")
    from qkov.data.dataset import prepare
    from qkov.errors import QkovError
    from qkov.repetition import count_edges

    try:
        stream = prepare(args.corpus, args.vocab_size)
    except QkovError as e:
        print(f"corpus_copying.py: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    tokens = np.asarray(stream.train).astype(np.int64)
    counts = stream.token_counts()
    prev = previous_occurrence(tokens)[:-1]  # positions that have a next token
    pos = np.arange(len(tokens) - 1)
    has = (prev >= 0) & (pos - prev <= args.window)
    pos, prev = pos[has], prev[has]
    right = tokens[pos + 1] == tokens[prev + 1]
    guessed = counts[tokens[prev + 1]]
    print(
        f"{args.corpus}, {args.vocab_size:,} tokens ({len(tokens):,} in the training split): "
        f"{has.mean():.1%} of positions have an earlier occurrence of their token within "
        f"{args.window}; the token after it is the next token at {right.mean():.1%} of them"
    )
    print("guessed token's count in training   share of the guesses   right")
    edges = count_edges(int(counts.max()))
    for lo, hi in zip(edges, edges[1:], strict=False):
        inside = (guessed >= lo) & (guessed < hi)
        if inside.any():
            label = "never" if hi == 1 else f"{lo:,}-{hi - 1:,}"
            print(f"{label:<35} {inside.mean():20.1%} {right[inside].mean():7.1%}")


if __name__ == "__main__":
    main()
