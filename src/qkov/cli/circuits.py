"""`qkov circuits DIR`: per-head OV eigenvalue statistics, top skip-trigrams (and the
token-split ones), and the virtual heads' OV statistic ranked by V-composition."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from qkov.cli.flags import add_download_flag, add_token_filter_flags, min_token_count, model_dirs


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "circuits",
        help="table of heads: OV eigenvalue statistics and top skip-trigrams",
        description="For every head: sum(lambda)/sum(|lambda|) of its OV circuit's "
        "eigenvalues (near 1: it copies what it attends to), the fraction of tokens whose own "
        "logit is the top-1 in their OV row, and its top skip-trigrams read from the factored "
        "QK and OV circuits, over tokens seen often enough in training.",
    )
    p.add_argument(
        "dir",
        help="checkpoint directory (config.json + model.safetensors; a hub id with --download)",
    )
    add_download_flag(p)
    p.add_argument("-k", "--top-k", type=int, default=10, help="skip-trigrams per head")
    p.add_argument(
        "--per-source",
        type=int,
        default=2,
        help="at most this many skip-trigrams per source token (0: no limit)",
    )
    add_token_filter_flags(p)
    p.add_argument("--bugs", type=int, default=3, help="factoring bugs shown per head")
    p.add_argument(
        "--split-k",
        type=int,
        default=10,
        help="token-split skip-trigrams [ab] ... [a] -> [b] shown per head (0: none)",
    )
    p.add_argument(
        "--chunk-size", type=int, default=None, help="vocab rows per dense chunk (memory bound)"
    )
    p.add_argument(
        "--exact",
        action="store_true",
        help="rank every source token (and token-split candidate) even on a large vocabulary "
        "(default there: the seeded samples `qkov analyze` uses, said so; GPT-2 small exact "
        "takes ~30 min)",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from qkov.allocator import return_freed_memory
    from qkov.budget import split_candidates, trigram_sources
    from qkov.checkpoint import load
    from qkov.eigenvalues import ov_statistics
    from qkov.errors import QkovError
    from qkov.io import atomic_write_text, check_output_file
    from qkov.split_tokens import sample_candidates, split_token_candidates
    from qkov.trigrams import allowed_tokens, head_factors, sample_tokens, skip_trigrams

    for flag, value, low in (
        ("--top-k", args.top_k, 1),
        ("--per-source", args.per_source, 0),
        ("--bugs", args.bugs, 0),
        ("--split-k", args.split_k, 0),
    ):
        if value < low:
            raise QkovError(f"{flag} must be >= {low}, got {value}")
    if args.chunk_size is not None and args.chunk_size < 1:
        raise QkovError(f"--chunk-size must be >= 1, got {args.chunk_size}")
    wanted = min_token_count(args)
    if args.json is not None:
        check_output_file(args.json, "--json")  # before the work, not after it
    (args.dir,) = model_dirs(args, [args.dir])
    model = load(args.dir, device=args.device, for_analysis=True)
    cfg = model.cfg
    if cfg.n_layers == 0:
        raise QkovError(f"{args.dir} is a 0-layer model: it has no heads to take apart")
    print(
        f"{args.dir}: n_layers={cfg.n_layers} n_heads={cfg.n_heads} d_model={cfg.d_model} "
        f"d_vocab={cfg.d_vocab} positional={cfg.positional}"
    )
    heads = [(l, h) for l in range(cfg.n_layers) for h in range(cfg.n_heads)]
    n_sources = None if args.exact else trigram_sources(cfg)
    rows = None if n_sources is None else sample_tokens(cfg.d_vocab, n_sources)
    if rows is not None:
        print(
            f"estimates: the top-1 self fraction and the skip-trigrams rank a seeded sample of "
            f"{n_sources:,} of {cfg.d_vocab:,} source tokens (as `qkov analyze` does at "
            "this size; --exact for every one)"
        )
    min_count = wanted if model.token_counts is not None else None
    print("\nhead   OV sum(l)/sum|l|   top-1 self fraction")
    ov, tables = {}, {}
    # A row as soon as it is computed (at GPT-2 size these take minutes), each head's
    # skip-trigrams with it: both read its W_O W_U, formed with its layer's next heads once.
    for l, h, factors in head_factors(model, heads):
        ov[(l, h)] = c = ov_statistics(model, l, h, args.chunk_size, rows, factors[1])
        print(f"L{l}H{h:<3} {c.eigenvalue_score:+16.3f}   {c.top1_fraction:19.3f}", flush=True)
        tables[(l, h)] = skip_trigrams(
            model,
            l,
            h,
            k=args.top_k,
            chunk_size=args.chunk_size,
            per_source=args.per_source or None,
            min_count=min_count,
            n_sources=n_sources,
            factors=factors,
        )
        return_freed_memory()  # each head's d_vocab-sized products (qkov.allocator)
    print("\n" + _filter_note(model, min_count))
    candidates = (  # the vocabulary's texts read once, not per head
        split_token_candidates(model, allowed_tokens(model, min_count)) if args.split_k else None
    )
    if candidates is not None and not args.exact:
        n_all = candidates.shape[0]
        candidates = sample_candidates(candidates, split_candidates(cfg))
        if candidates.shape[0] < n_all:
            print(
                f"estimates: the token-split skip-trigrams rank a seeded sample of "
                f"{candidates.shape[0]:,} of {n_all:,} candidates (as `qkov analyze` does at "
                "this size; --exact for every one)"
            )
    if cfg.normalization != "none":
        print(
            "boost and score are written before the final norm, which divides each position "
            "by its scale: logit = boost / scale (`qkov analyze` measures the scale on the "
            "evaluation text: final_scale in analysis.json, noted in the report)"
        )
    results = []
    for lh in heads:
        trigrams = _head_trigrams(model, *lh, tables[lh], args, min_count, candidates)
        results.append({**ov[lh].to_dict(), **trigrams})
        return_freed_memory()
    virtual = _virtual_heads(model, exact=args.exact)
    if args.json is not None:
        record = {"min_token_count": min_count, "heads": results, "virtual_heads": virtual}
        atomic_write_text(args.json, json.dumps(record, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


def _filter_note(model, min_count: int | None) -> str:
    """The skip-trigram tables' header: which tokens they rank over."""
    if min_count:
        kept = int((model.token_counts >= min_count).sum())
        return (
            f"skip-trigrams over tokens seen >= {min_count} times in training ({kept:,} of "
            f"{model.cfg.d_vocab:,} tokens; --all-tokens for every token)"
        )
    why = "no token_counts.json in the run" if model.token_counts is None else "--all-tokens"
    return f"skip-trigrams over all {model.cfg.d_vocab:,} tokens ({why})"


def _head_trigrams(
    model, layer: int, head: int, trigrams, args, min_count: int | None, candidates
) -> dict:
    """Print one head's skip-trigrams (`trigrams`) and factoring bugs; return them as JSON
    records."""
    from qkov.cli import plural
    from qkov.split_tokens import split_token_trigrams
    from qkov.trigrams import factoring_bugs

    note = " (direct path only)" if layer > 0 else ""
    print(
        f"\nL{layer}H{head} top {plural(len(trigrams), 'skip-trigram')}{note}: "
        "score = sigmoid(attention) * logit boost"
    )
    for i, t in enumerate(trigrams, 1):
        print(f"  {i:>2}. {t}   attn {t.attention:+.2f}  boost {t.boost:+.2f}", flush=True)
    bugs = factoring_bugs(model, layer, head, trigrams=trigrams)[: args.bugs]
    for b in bugs:
        print(f"  bug: {b.first} & {b.second}\n       => {b.crossed}")
    if args.bugs and not bugs:
        print(
            "  no factoring bug: no two of these skip-trigrams share a source token "
            "with different destinations and outs"
        )
    record = {
        "skip_trigrams": [t.to_dict() for t in trigrams],
        "factoring_bugs": [b.to_dict() for b in bugs],
    }
    if args.split_k:
        split = split_token_trigrams(
            model, layer, head, k=args.split_k, min_count=min_count, candidates=candidates
        )
        print(
            f"  token-split skip-trigrams [ab] ... [a] -> [b]{note}: {split.n_favoured:,} of "
            f"{split.n_candidates:,} favoured (attention > 0 and boost > 0); top "
            f"{len(split.trigrams)}:"
        )
        for i, t in enumerate(split.trigrams, 1):
            print(f"  {i:>2}. {t}   attn {t.attention:+.2f}  boost {t.boost:+.2f}")
        record["split_token_trigrams"] = split.to_dict()
    return record


VIRTUAL_JSON = 1000  # virtual heads in --json without --exact


def _virtual_heads(model, n: int = 10, exact: bool = False) -> list[dict]:
    """Print the virtual heads (V-composition) with the highest composition scores and
    their OV Σλ/Σ|λ|; return them as JSON records: every one with exact, else the
    VIRTUAL_JSON highest (TinyLlama-1.1B has 236,544, each a d_head^2 d_model product)."""
    from qkov.virtual_heads import virtual_head_ov

    L, H = model.cfg.n_layers, model.cfg.n_heads
    n_all = H * H * L * (L - 1) // 2
    virtual = virtual_head_ov(model, top=None if exact else VIRTUAL_JSON)
    if not virtual:
        return []
    kept = "" if len(virtual) == n_all else f" (--json keeps the {len(virtual):,} highest)"
    print(f"\nvirtual heads (V-composition), top {min(n, len(virtual))} of {n_all:,}{kept}:")
    print("virtual head    V-composition   OV sum(l)/sum|l|")
    for v in virtual[:n]:
        print(f"{v.name:<15} {v.v_composition:13.3f}   {v.eigenvalue_score:+16.3f}")
    return [v.to_dict() for v in virtual]
