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
kind (what the model would pay were they all right). That is split as the log-sum-exp of
the logits less the copied token's logit, both from the mean logit, and the logit by what
writes it, layer by layer (as `qkov heads --repetition` splits the repeated half). Then the
same for the repeated half of the repetition test (10 sequences, a block of 50 repeated
once, seeds 0 to 4), where every copy is right. Used in src/qkov/demo_models/TRAINING.md
("Where the repetition test sits in code").
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
import torch
from corpus_copying import previous_occurrence

SHIPPED = Path(__file__).resolve().parents[1] / "src" / "qkov" / "demo_models"
MAX_MATCH = 4  # the last row counts matches of this length or more
PRIOR_EDGE = 1e-3  # the prior's probability below which a copy counts as implausible
HALF_LEN, BATCH, SEEDS = 50, 10, range(5)  # the repetition test, as `qkov.repetition`


def layer_writes(model, tokens: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The logits less their mean, [batch, pos, vocab], and what each part of `model` adds
    to them, [batch, pos, vocab] each: the embedding ("embed", with W_pos where it is in
    the stream), each layer's heads ("attn{l}") and MLP ("mlp{l}", with its b_out), and the
    other biases ("bias"). Exact, as `qkov.repetition.repeated_token_logit` splits the
    repeated token's logit: the model folded, each write over the final norm's scale frozen,
    through W_U less its mean column; the parts sum to the logits."""
    from qkov.fold import fold_layernorm
    from qkov.paths import frozen_scales

    m = fold_layernorm(model, center_unembed=False, share=True)
    cfg, w = m.cfg, m.weights()
    logits, cache = m.run_with_cache(
        tokens, names=lambda n: n.split(".")[0] in ("scale", "z", "mlp_out")
    )
    final = frozen_scales(m, cache)[-1]
    W_U = w["W_U"].float()
    U = W_U - W_U.mean(1, keepdim=True)
    writes = {"embed": w["W_E"][tokens]}
    if cfg.positional == "standard":
        writes["embed"] = writes["embed"] + w["W_pos"][: tokens.shape[1]]
    bias = torch.zeros(cfg.d_model, device=m.device)
    for l in range(cfg.n_layers):
        writes[f"attn{l}"] = torch.einsum("bhpd,hdm->bpm", cache[f"z.{l}"], w["W_O"][l])
        if cfg.bias:
            bias = bias + w["b_O"][l]
        if cfg.d_mlp:
            writes[f"mlp{l}"] = cache[f"mlp_out.{l}"]
    parts = {name: (x.float() / final) @ U for name, x in writes.items()}
    if cfg.bias:
        b_U = w["b_U"].float()
        parts["bias"] = (bias.float() / final) @ U + (b_U - b_U.mean())
    logits = logits.float()
    return logits - logits.mean(-1, keepdim=True), parts


def copies(model, prior, tokens: torch.Tensor, first: int = 0) -> dict[str, np.ndarray]:
    """Each copy at positions >= `first` of the sequences tokens [batch, pos]: "copied" (the
    token it guesses), "right", "match" (its length), "prior" (the prior's probability of
    the copied token), "logp" (the model's log probability of it), "log_sum_exp" and
    "logit" (of the model's logits, from the mean logit: logp is the second less the
    first), and the logit's parts by `layer_writes` ("part:embed", "part:attn0", ...)."""
    with torch.no_grad():
        logits, parts = layer_writes(model, tokens)
        p_prior = torch.softmax(prior(tokens).float(), -1)
    logp = torch.log_softmax(logits, -1)
    lse = torch.logsumexp(logits, -1)
    out: dict[str, list[np.ndarray]] = {}
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
        at, idx = torch.from_numpy(pos), torch.from_numpy(copied)
        cols = {
            "copied": copied,
            "right": row[pos + 1] == copied,
            "match": match,
            "prior": p_prior[b, at, idx].numpy(),
            "logp": logp[b, at, idx].numpy(),
            "log_sum_exp": lse[b, at].numpy(),
            "logit": logits[b, at, idx].numpy(),
        }
        cols |= {f"part:{name}": part[b, at, idx].numpy() for name, part in parts.items()}
        for key, col in cols.items():
            out.setdefault(key, []).append(col)
    return {key: np.concatenate(cols) for key, cols in out.items()}


def joined(runs: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {key: np.concatenate([r[key] for r in runs]) for key in runs[0]}


SPLIT_HEAD = f"{'copies':>7} {'-log p(copy)':>13} {'= log-sum-exp':>14} {'- logit':>8}   by writer"


def split(c: dict[str, np.ndarray], cell: np.ndarray) -> str:
    """Means over the copies in `cell`, as SPLIT_HEAD names them: -log p(copy), the
    log-sum-exp and logit it is, and the logit's parts by writer."""
    by = ", ".join(f"{key[5:]} {c[key][cell].mean():+.2f}" for key in c if key.startswith("part:"))
    return (
        f"{int(cell.sum()):7,} {-c['logp'][cell].mean():13.2f} "
        f"{c['log_sum_exp'][cell].mean():14.2f} {c['logit'][cell].mean():8.2f}   {by}"
    )


def table(c: dict[str, np.ndarray], title: str) -> None:
    right, match, prior, logp = c["right"].astype(bool), c["match"], c["prior"], c["logp"]
    print(f"\n{title}: {len(right):,} copies, right at {right.mean():.1%}")
    print(
        f"{'match':>5} {'prior':>8} {'share':>7} {'right':>7} {'mean p(copy)':>13} "
        f"{'loss where right':>17} {SPLIT_HEAD}"
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
                f"{np.exp(logp[cell]).mean():13.3f} {loss} {split(c, cell)}"
            )


def by_count(code: dict[str, np.ndarray], repeats: dict[str, np.ndarray], counts) -> None:
    """The long matches of implausible tokens (the repetition test's kind of copy) by the
    copied token's count in the model's training split, in code and on the repeated half,
    split as in `table`; then the repeated half's loss were each of its tokens as costly as
    code's copies of tokens as frequent (its own cost where code has none)."""
    from qkov.repetition import count_edges

    counts = np.asarray(counts)
    edges = count_edges(int(counts.max()))
    cost = []
    print(f"\nmatch {MAX_MATCH}+, prior <{PRIOR_EDGE:g}, by the copied token's count in training")
    for name, c in (("code", code), ("repeated half", repeats)):
        kind = (c["match"] >= MAX_MATCH) & (c["prior"] < PRIOR_EDGE)
        which = np.digitize(counts[c["copied"]], edges) - 1  # edges[which] <= count
        print(f"{name + ':':<17} {SPLIT_HEAD}")
        losses = {}
        for i, (lo, hi) in enumerate(itertools.pairwise(edges)):
            cell = kind & (which == i)
            if cell.any():
                losses[i] = (int(cell.sum()), float(-c["logp"][cell].mean()))
                print(f"{'never' if hi == 1 else f'{lo:,}-{hi - 1:,}':>17} {split(c, cell)}")
        cost.append(losses)
    in_code, repeated = cost
    n = sum(k for k, _ in repeated.values())
    mixed = sum(k * in_code.get(i, (k, loss))[1] for i, (k, loss) in repeated.items()) / n
    print(
        f"the repeated half of that kind at code's cost for each count (its own where code has "
        f"none): {mixed:.2f} nats, {mixed / np.log(len(counts)):.0%} of uniform"
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
    code = [
        copies(model, prior, windows[i : i + args.batch_size])
        for i in range(0, len(windows), args.batch_size)
    ]
    table(joined(code), f"held-out code ({len(windows)} windows of {n} tokens)")
    repeats = [
        copies(
            model, prior, repeated_random_tokens(model.cfg.d_vocab, BATCH, HALF_LEN, s), HALF_LEN
        )
        for s in SEEDS
    ]
    table(joined(repeats), "the repeated half of the repetition test (seeds 0-4)")
    counts = getattr(model, "token_counts", None)
    if counts is not None:
        by_count(joined(code), joined(repeats), counts)


if __name__ == "__main__":
    main()
