"""`qkov heads DIR`: head scores, labels and induction partners; term importance on request."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from qkov.data.corpus import SYNTHETIC


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "heads",
        help="score and label every head (previous-token, induction, ...)",
        description="Score every head on a seeded batch of repeated random tokens, label it, "
        "and name the earlier heads each induction head's key reads (K-composition).",
    )
    p.add_argument("dir", help="checkpoint directory")
    p.add_argument("--batch", type=int, default=16, help="sequences in the probe batch")
    p.add_argument(
        "--seq-len", type=int, default=None, help="probe sequence length (default min(128, n_ctx))"
    )
    p.add_argument("--seed", type=int, default=0, help="probe seed")
    p.add_argument(
        "--text",
        default=None,
        help="a text file (encoded with the checkpoint's tokenizer): also score heads on it, "
        "and use it for --terms and the ICL score (default: held-out documents of the "
        "training corpus, or the probe batch for synthetic runs)",
    )
    p.add_argument(
        "--terms", action="store_true", help="term importance: ablate each path order and head"
    )
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.set_defaults(func=run)


def text_tokens(model, path: str, batch: int):
    """Encode a text file with the model's tokenizer into up to `batch` windows of n_ctx:
    [batch', n_ctx]."""
    import torch

    from qkov.errors import QkovError

    if model.tokenizer is None:
        raise QkovError("this checkpoint has no tokenizer.json: --text needs one to encode text")
    p = Path(path)
    if not p.is_file():
        raise QkovError(f"{p} does not exist: pass a text file to --text")
    ids = model.tokenizer.encode(p.read_text(encoding="utf-8", errors="replace")).ids
    n = model.cfg.n_ctx
    k = min(batch, len(ids) // n)
    if k < 1:
        raise QkovError(f"{p} has {len(ids)} tokens, fewer than n_ctx={n}: pass a longer text")
    return torch.tensor(ids[: k * n], dtype=torch.long).view(k, n)


def heldout_corpus(model, run_dir: str) -> str | None:
    """The text corpus named in the run's train_config.json, if the model can encode it."""
    cfg_path = Path(run_dir) / "train_config.json"
    if model.tokenizer is None or not cfg_path.is_file():
        return None
    try:
        corpus = json.loads(cfg_path.read_text(encoding="utf-8")).get("corpus")
    except (OSError, ValueError, AttributeError):
        return None
    return corpus if isinstance(corpus, str) and corpus not in SYNTHETIC else None


def run(args: argparse.Namespace) -> int:
    from qkov.ablation import icl_score, term_importance
    from qkov.checkpoint import load
    from qkov.data.probes import default_seq_len, induction_probe
    from qkov.heads import classify_heads, head_scores

    model = load(args.dir)
    cfg = model.cfg
    text = text_tokens(model, args.text, args.batch) if args.text else None
    result: dict[str, object] = {}
    cls = classify_heads(model, batch=args.batch, seq_len=args.seq_len, seed=args.seed)
    s = cls.scores
    print(
        f"{args.dir}: {cfg.n_layers} layers x {cfg.n_heads} heads; probe: {s.n_sequences} "
        f"sequences of {s.seq_len} tokens ending in a repeated random block (seed {args.seed})"
    )
    print(cls.table() if cls.records else "(no heads: a 0-layer model is a bigram table)")
    result["classification"] = cls.to_dict()

    if text is not None:
        tokens = text
        ts = head_scores(model, tokens)
        print(f"\nscores on {args.text} ({ts.n_sequences} x {ts.seq_len} tokens)")
        print(f"{'head':<6} {'prev':>6} {'prefix':>6} {'dup':>6} {'copy':>6} {'pos':>6}")
        for l in range(cfg.n_layers):
            for h in range(cfg.n_heads):
                r = ts.get(l, h)
                print(
                    f"L{l}H{h:<4} {r['previous_token']:>6.3f} {r['prefix_matching']:>6.3f} "
                    f"{r['duplicate_token']:>6.3f} {r['copying']:>6.3f} {r['positional']:>6.3f}"
                )
        result["text_scores"] = ts.to_dict()
        where = args.text
    elif (corpus := heldout_corpus(model, args.dir)) is not None:
        # Held-out documents of the corpus the model was trained on: honest loss deltas.
        from qkov.data import heldout_tokens

        tokens = heldout_tokens(model.tokenizer, corpus, args.batch, cfg.n_ctx)
        where = f"held-out documents of --corpus {corpus} ({tokens.shape[0]} x {cfg.n_ctx} tokens)"
    else:
        seq_len = args.seq_len or default_seq_len(cfg.n_ctx)
        tokens = induction_probe(cfg.d_vocab, args.batch, seq_len, args.seed).tokens
        where = "the probe batch"

    if tokens.shape[1] >= 3:
        icl = icl_score(model, tokens)
        print(
            f"\nICL score on {where}: loss at token {icl.late} ({icl.loss_late:.3f}) - "
            f"loss at token {icl.early} ({icl.loss_early:.3f}) = {icl.score:+.3f}"
        )
        result["icl"] = icl.to_dict()

    if args.terms:
        ti = term_importance(model, tokens)
        print(f"\nterm importance on {where} (attention patterns frozen for path orders)")
        print(ti.table())
        result["term_importance"] = ti.to_dict()

    if args.json:
        from qkov.io import atomic_write_text

        atomic_write_text(Path(args.json), json.dumps(result, indent=1) + "\n")
        print(f"\nwrote {args.json}")
    return 0
