"""Where the repetition test sits among the copies of held-out code, and what a model gives each.

    python scripts/copies_by_match.py            # the shipped attn2; attn1 as the prior
    python scripts/copies_by_match.py --model runs/X --prior src/qkov/demo_models/attn1

A copy is the induction guess at a position whose token occurred before in the window: the
token that followed its most recent earlier occurrence ([a][b] ... [a] -> [b];
`corpus_copying.py` counts how often it is right). Two things say what kind of copy it is:
its match length, how many tokens up to and including [a] match the earlier occurrence's
(1 to 4 or more), and how plausible the copied token is without any copying: the
probability the prior, a model without induction heads (by default the shipped 1-layer
model), gives it there. The table splits the copies of the held-out split (windows of the
model's n_ctx) by both, with how often each kind is right and what `--model` gives it: its
mean probability, its loss where the copy is right, and -log p(copy) over every copy of the
kind (what the model would pay were they all right); then the same for the repeated half
of the repetition test (10 sequences, a block of 50 repeated once, seeds 0 to 4), where
every copy is right. Used in src/qkov/demo_models/TRAINING.md ("Where the repetition test
sits in code").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from corpus_copying import previous_occurrence

SHIPPED = Path(__file__).resolve().parents[1] / "src" / "qkov" / "demo_models"
MAX_MATCH = 4  # the last row counts matches of this length or more
PRIOR_EDGE = 1e-3  # the prior's probability below which a copy counts as implausible
HALF_LEN, BATCH, SEEDS = 50, 10, range(5)  # the repetition test, as `qkov.repetition`


def copies(model, prior, tokens: torch.Tensor, first: int = 0) -> np.ndarray:
    """One row per copy at positions >= `first` of each sequence of tokens [batch, pos]:
    (right, match length, the prior's probability of the copied token, the model's log
    probability of it)."""
    with torch.no_grad():
        logp = torch.log_softmax(model(tokens).float(), -1)
        p_prior = torch.softmax(prior(tokens).float(), -1)
    out = []
    for b, row in enumerate(tokens.numpy()):
        prev = previous_occurrence(row)[:-1]  # the positions that have a next token
        pos = np.arange(len(row) - 1)
        keep = (prev >= 0) & (pos >= first)
        pos, prev = pos[keep], prev[keep]
        copied = row[prev + 1]
        match = np.ones(len(pos), dtype=np.int64)
        alive = np.ones(len(pos), dtype=bool)
        for back in range(1, MAX_MATCH):
            ok = alive & (prev - back >= 0)
            ok[ok] = row[pos[ok] - back] == row[prev[ok] - back]
            match += ok
            alive = ok
        idx = torch.from_numpy(copied)
        out.append(
            np.stack(
                [
                    row[pos + 1] == copied,
                    match,
                    p_prior[b, pos, idx].numpy(),
                    logp[b, pos, idx].numpy(),
                ],
                axis=1,
            )
        )
    return np.concatenate(out)


def table(rows: np.ndarray, title: str) -> None:
    right, match, prior, logp = rows.T
    right = right.astype(bool)
    print(f"\n{title}: {len(rows):,} copies, right at {right.mean():.1%}")
    print(
        f"{'match':>5} {'prior':>8} {'share':>7} {'right':>7} {'mean p(copy)':>13} "
        f"{'loss where right':>17} {'-log p(copy)':>13} {'copies':>7}"
    )
    for length in range(1, MAX_MATCH + 1):
        at = match >= length if length == MAX_MATCH else match == length
        for label, inside in (
            (f"<{PRIOR_EDGE:g}", prior < PRIOR_EDGE),
            ("more", prior >= PRIOR_EDGE),
        ):
            cell = at & inside
            if not cell.any():
                continue
            hit = cell & right
            loss = f"{-logp[hit].mean():17.2f}" if hit.any() else f"{'-':>17}"
            name = f"{length}+" if length == MAX_MATCH else str(length)
            print(
                f"{name:>5} {label:>8} {cell.mean():7.1%} {right[cell].mean():7.1%} "
                f"{np.exp(logp[cell]).mean():13.3f} {loss} {-logp[cell].mean():13.2f} "
                f"{int(cell.sum()):7,}"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(SHIPPED / "attn2"), help="the model measured")
    ap.add_argument("--prior", default=str(SHIPPED / "attn1"), help="a model without induction")
    ap.add_argument("--corpus", default="stdlib")
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    if args.batch_size < 1:
        ap.error(f"--batch-size must be at least 1, got {args.batch_size}")
    import qkov
    from qkov.data.dataset import prepare
    from qkov.data.probes import repeated_random_tokens
    from qkov.errors import QkovError

    try:
        model, prior = qkov.load(args.model).eval(), qkov.load(args.prior).eval()
        stream = prepare(args.corpus, model.cfg.d_vocab)
        for name, m in (("--model", model), ("--prior", prior)):
            if m.tokenizer is None or m.tokenizer.to_str() != stream.tokenizer.to_str():
                raise QkovError(
                    f"{name} was not trained with the tokenizer of --corpus {args.corpus} at "
                    f"{model.cfg.d_vocab:,} tokens: give models of that corpus"
                )
    except QkovError as e:
        print(f"copies_by_match.py: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    n = model.cfg.n_ctx
    val = np.asarray(stream.val).astype(np.int64)
    windows = torch.from_numpy(val[: len(val) // n * n].reshape(-1, n))
    rows = [
        copies(model, prior, windows[i : i + args.batch_size])
        for i in range(0, len(windows), args.batch_size)
    ]
    table(np.concatenate(rows), f"held-out code ({len(windows)} windows of {n} tokens)")
    repeats = [
        copies(
            model, prior, repeated_random_tokens(model.cfg.d_vocab, BATCH, HALF_LEN, s), HALF_LEN
        )
        for s in SEEDS
    ]
    table(np.concatenate(repeats), "the repeated half of the repetition test (seeds 0-4)")


if __name__ == "__main__":
    main()
