"""`qkov heads DIR`: head scores, labels and induction partners; ICL score and term importance
on the evaluation set."""

from __future__ import annotations

import argparse
import json
import math
import sys

from qkov.cli.flags import add_download_flag, add_text_flags, given_text, model_dirs


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "heads",
        help="score and label every head (previous_token, induction, ...)",
        description="Score every head on a seeded batch of random tokens ending in a repeated "
        "block (the induction probe), label it, and name the earlier heads each induction "
        "head's key reads (K-composition). The ICL score (and --terms) are measured on the "
        "evaluation set: --text or --text-file if given, else held-out documents of the "
        "training corpus, else the probe.",
    )
    p.add_argument("dir", help="checkpoint directory (a hub id with --download)")
    add_download_flag(p)
    p.add_argument(
        "--batch-size", "--batch", type=int, default=16, help="sequences in the probe batch"
    )
    p.add_argument(
        "--seq-len", type=int, default=None, help="probe sequence length (default min(128, n_ctx))"
    )
    p.add_argument("--seed", type=int, default=0, help="probe seed")
    add_text_flags(
        p,
        "score heads on it too, and evaluate on it (encoded with the checkpoint's tokenizer, "
        "in windows of n_ctx), as `qkov analyze` does",
    )
    p.add_argument(
        "--eval-seqs", type=int, default=256, help="at most this many evaluation sequences"
    )
    p.add_argument(
        "--terms", action="store_true", help="term importance: ablate each path order and head"
    )
    p.add_argument(
        "--qk-terms",
        action="store_true",
        help="split each head's attention scores on the evaluation set into QK terms "
        "(query-side path x key-side path: direct, Q-, K-composition) and rank them",
    )
    p.add_argument(
        "--qk-seqs", type=int, default=8, help="evaluation sequences the QK terms are measured on"
    )
    p.add_argument(
        "--qk-heads",
        default=None,
        help="with --qk-terms: only these heads, e.g. L1H0,L5H1 (default: every head)",
    )
    p.add_argument(
        "--qk-max-order",
        type=int,
        default=None,
        help="with --qk-terms: chains of more heads are summed into one remainder side "
        "(default 2, the paper's terms; a deep model's later layers need 0 or 1)",
    )
    p.add_argument(
        "--repetition",
        action="store_true",
        help="also run the repeated random tokens test peers report (batch 10, a block of 50 "
        "repeated once): every head's induction score, the loss on each half, and the standard "
        "probe's induction scores over 8 seeds",
    )
    p.add_argument(
        "--repetition-seeds",
        type=int,
        default=1,
        metavar="N",
        help="with --repetition (implied): each head's score and the loss on each half as the "
        "mean over seeds 0 .. N-1, and each seed's losses (default 1: seed 0); the split of "
        "the repeated half's loss stays seed 0's",
    )
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from qkov.ablation import term_importance
    from qkov.checkpoint import load
    from qkov.classification import classify_heads
    from qkov.cli import plural
    from qkov.data.evaluation import evaluation_set
    from qkov.data.probes import default_seq_len, induction_probe
    from qkov.data.tokenizer import start_ids
    from qkov.errors import QkovError
    from qkov.heads import head_scores
    from qkov.icl import icl_from_losses, icl_score
    from qkov.io import atomic_write_text, check_output_file
    from qkov.progress import Stages
    from qkov.report.fmt import stderr_text

    if args.json:
        check_output_file(args.json, "--json")
    if args.batch_size < 1 or args.eval_seqs < 1 or args.qk_seqs < 1:
        raise QkovError("--batch-size, --eval-seqs and --qk-seqs must be at least 1")
    if args.repetition_seeds < 1:
        raise QkovError(f"--repetition-seeds must be at least 1, got {args.repetition_seeds}")
    args.repetition |= args.repetition_seeds > 1
    if args.qk_max_order is not None and args.qk_max_order < 0:
        raise QkovError(f"--qk-max-order must be >= 0, got {args.qk_max_order}")
    text, text_name = given_text(args) or (None, "")
    (args.dir,) = model_dirs(args, [args.dir])
    stage = Stages(args.dir, lambda line: print(line, file=sys.stderr, flush=True))
    model = load(args.dir, for_analysis=True)
    cfg = model.cfg
    chosen = _chosen_heads(args.qk_heads, cfg)  # checked before the work
    ev = evaluation_set(
        model, args.dir, text=text, text_name=text_name, max_sequences=args.eval_seqs
    )
    # without a text or a corpus the evaluation set is the probe: its ICL score then reads the
    # losses of the probe's pass (a second forward pass takes ~25 s at 1B)
    probe = induction_probe(
        cfg.d_vocab,
        args.batch_size,
        args.seq_len or default_seq_len(cfg.n_ctx),
        args.seed,
        prefix=start_ids(model.tokenizer),
    )
    icl_on_probe = ev.kind == "random_tokens" and torch.equal(ev.tokens, probe.tokens)
    stage(f"head scores on the repeated-token probe ({plural(cfg.n_layers * cfg.n_heads, 'head')})")
    cls = classify_heads(  # nothing here shows composition past the induction heads' partners
        model,
        batch=args.batch_size,
        seq_len=args.seq_len,
        seed=args.seed,
        composition=(),
        log=stage,
        token_losses=icl_on_probe,
    )
    stage("done with the head table")
    s = cls.scores
    print(
        f"{args.dir}: {plural(cfg.n_layers, 'layer')} x {plural(cfg.n_heads, 'head')}; probe: "
        f"{plural(s.n_sequences, 'sequence')} of {s.seq_len} random tokens ending in a "
        f"repeated block (seed {args.seed})"
    )
    print(cls.table() if cls.records else "(no heads: a 0-layer model is a bigram table)")
    result: dict[str, object] = {"classification": cls.to_dict(), "evaluation": ev.to_dict()}
    where = f"{ev.description}: {ev.tokens.shape[0]} x {ev.tokens.shape[1]} tokens"

    ts = None
    if ev.kind == "text" and cls.records:
        stage("head scores on the evaluation text")
        ts = head_scores(model, ev.tokens, token_losses=ev.tokens.shape[1] >= 3)
        print(f"\nscores on {where}")
        print(_text_table(ts, cfg.n_layers, cfg.n_heads))
        result["text_scores"] = ts.to_dict()

    if ev.tokens.shape[1] >= 3:
        stage("ICL score")
        losses = cls.scores.token_losses if icl_on_probe else getattr(ts, "token_losses", None)
        icl = icl_score(model, ev.tokens) if losses is None else icl_from_losses(losses)
        print(
            f"\nICL score on {where}: mean loss on tokens {icl.late[0]}-{icl.late[1] - 1} "
            f"({icl.loss_late:.3f}) - on tokens {icl.early[0]}-{icl.early[1] - 1} "
            f"({icl.loss_early:.3f}) = {icl.score:+.3f}"
            + stderr_text(icl.stderr, f" (standard error over {icl.n_sequences} sequences)")
        )
        result["icl"] = icl.to_dict()

    if args.terms:
        stage("term importance")
        ti = term_importance(model, ev.tokens)
        print(f"\nterm importance on {where} (attention patterns frozen for path orders)")
        print(ti.table())
        result["term_importance"] = ti.to_dict()

    if args.qk_terms and cls.records:
        from qkov.qk_terms import QK_MAX_ORDER, qk_expansions, qk_terms_table

        tokens = ev.tokens[: args.qk_seqs]
        order = QK_MAX_ORDER if args.qk_max_order is None else args.qk_max_order
        stage(f"QK terms of {plural(len(chosen), 'head')}")
        expansions = list(qk_expansions(model, tokens, chosen, max_order=order))
        print(
            f"\nQK terms on {where} (first {tokens.shape[0]} sequences; earlier patterns "
            f"frozen; chains of more than {order} heads summed as 'remainder')"
        )
        print(qk_terms_table(expansions))
        result["qk_terms"] = [qe.summary() for qe in expansions]

    if args.repetition and cls.records:
        stage("repeated random tokens test, and the probe over 8 seeds")
        result["repetition"] = _repetition(model, args.repetition_seeds)

    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=1) + "\n")
        print(f"\nwrote {args.json}")
    return 0


def _repetition(model, n_seeds: int = 1) -> dict[str, object]:
    """Print and return the repetition test (seed 0; with n_seeds > 1 each head's score and
    the losses also as means over seeds 0 .. n_seeds-1) and the probe over seeds 0-7."""
    import torch

    from qkov.data.tokenizer import start_ids
    from qkov.heads import head_scores
    from qkov.repetition import repetition_half_len, repetition_test

    cfg = model.cfg
    if repetition_half_len(model) < 50:  # the peers' block of 50, after any start token
        need = 100 + len(start_ids(model.tokenizer))
        print(f"\nrepetition test: needs n_ctx >= {need} (this model: {cfg.n_ctx}); skipped")
        return {}
    r = repetition_test(model)
    tests = [r] + [repetition_test(model, seed=s, split=False) for s in range(1, n_seeds)]
    scores = torch.stack([t.induction_scores for t in tests]).mean(0)
    first = sum(t.first_half_loss for t in tests) / n_seeds
    repeated = sum(t.repeated_half_loss for t in tests) / n_seeds
    probes = torch.stack([head_scores(model, seed=s, copying=False).induction for s in range(8)])
    seeds = f"seed {r.seed}" if n_seeds == 1 else f"the mean of seeds 0 to {n_seeds - 1}"
    print(
        f"\nrepeated random tokens ({r.batch} sequences, a block of {r.half_len} repeated once, "
        f"{seeds}): loss on the first half {first:.2f} nats, on the repeated "
        f"half {repeated:.2f} ({100 * repeated / r.uniform_loss:.0f}% of the uniform "
        f"ln {cfg.d_vocab} = {r.uniform_loss:.2f})"
    )
    if n_seeds > 1:
        print(
            "seed by seed, first half / repeated half: "
            + ", ".join(
                f"{t.seed}: {t.first_half_loss:.2f} / {t.repeated_half_loss:.2f} "
                f"({100 * t.repeated_fraction:.0f}%)"
                for t in tests
            )
        )
    column = "repetition" if n_seeds == 1 else f"mean of {n_seeds}"
    print(f"head    {column:>10}  probe seeds 0-7: min  mean  max")
    for l in range(cfg.n_layers):
        for h in range(cfg.n_heads):
            p = probes[:, l, h]
            print(
                f"L{l}H{h:<4} {float(scores[l, h]):10.3f}  {float(p.min()):21.3f} "
                f"{float(p.mean()):5.3f} {float(p.max()):5.3f}"
            )
    if n_seeds > 1:
        print("(the split of the repeated half below is seed 0's)")
    x = r.repeated_token_logit
    print(
        f"the repeated half's loss, split (means over its predictions; logits counted from "
        f"their mean): log-sum-exp {x.log_sum_exp:.2f} - the repeated token's logit "
        f"{x.logit:.2f} = {x.log_sum_exp - x.logit:.2f} nats"
    )
    print("the repeated token's logit by writer: " + _writers(x.writers))
    print(
        f"its strongest rival's logit (the other token with the highest logit at each "
        f"prediction) {x.rival_logit:.2f}, by writer: " + _writers(x.rival_writers)
    )
    print(
        "the repeated half's loss with one layer's direct write to the logits taken out (later "
        "layers still read it; patterns and the final norm's scale frozen): "
        + ", ".join(
            f"{name} {loss:.2f} ({loss / r.uniform_loss:.0%})"
            for name, loss in x.loss_without.items()
        )
    )
    if r.by_training_count:
        total = sum(b.predictions * b.loss for b in r.by_training_count)
        print(
            "the repeated half's loss by how often the repeated token occurred in training "
            "(token_counts.json), and that token's logit (from the mean logit) where the first "
            "half predicts it and where the repeat does:\n"
            "count in training   predictions   loss   share of the loss   logit: first half"
            "  repeat   lift"
        )
        for b in r.by_training_count:
            share = b.predictions * b.loss / total if total else float("nan")
            print(
                f"{b.label:<18} {b.predictions:12d} {b.loss:6.2f} {share:19.0%} "
                f"{b.first_logit:+18.2f} {b.repeated_logit:+7.2f} {b.lift:+6.2f}"
            )
    out = {**r.to_dict(), "probe_induction_by_seed": probes.tolist()}
    if n_seeds > 1:  # seed 0's record above, and the means over the seeds beside it
        out["mean_over_seeds"] = {
            "seeds": [t.seed for t in tests],
            "induction_scores": scores.tolist(),
            "first_half_loss": first,
            "repeated_half_loss": repeated,
            "repeated_fraction": repeated / r.uniform_loss,
            "by_seed": [
                {k: t.to_dict()[k] for k in ("seed", "first_half_loss", "repeated_half_loss")}
                for t in tests
            ],
        }
    return out


def _writers(writers: dict[str, float]) -> str:
    """'L1H6 +1.71, L1H2 +1.63, ..., the other 9 +0.13': the 8 largest pushes, then the rest."""
    from qkov.reprs import largest

    return ", ".join(f"{name} {v:+.2f}" for name, v in largest(writers, 8))


def _text_table(ts, n_layers: int, n_heads: int) -> str:
    """Head scores measured on text (prefix matching is the induction test for any text).
    A score the text does not define prints as '-': the positional score compares sequences
    (it needs two), prefix matching and duplicate token need a token that repeats."""
    from qkov.classification import _fmt

    cols = {"prev": "previous_token", "prefix": "prefix_matching", "dup": "duplicate_token"}
    cols |= {"copy": "copying", "pos": "positional"}
    lines = ["head   " + " ".join(f"{c:>6}" for c in cols)]
    undefined = False
    for l in range(n_layers):
        for h in range(n_heads):
            values = [ts.get(l, h)[n] for n in cols.values()]
            undefined |= not all(math.isfinite(v) for v in values)
            lines.append(f"L{l}H{h:<4} " + " ".join(_fmt(v, "6.3f") for v in values))
    legend = ", ".join(f"{c} = {n}" for c, n in cols.items()) + " score"
    lines.append(f"({legend}; - : not defined on this text)" if undefined else f"({legend})")
    return "\n".join(lines)


def _chosen_heads(spec: str | None, cfg) -> list[tuple[int, int]]:
    """--qk-heads "L1H0,L5H1" as [(1, 0), (5, 1)]; None: every head, layer-major."""
    from qkov.cli.flags import parse_head
    from qkov.errors import QkovError

    if spec is None:
        return [(l, h) for l in range(cfg.n_layers) for h in range(cfg.n_heads)]
    heads = []
    for name in spec.split(","):
        l, h = parse_head(name, "--qk-heads")
        if not (l < cfg.n_layers and h < cfg.n_heads):
            raise QkovError(
                f"--qk-heads: {name.strip()!r} is not a head of this model: write heads as "
                f"L1H0,L1H3 (layers 0-{cfg.n_layers - 1}, heads 0-{cfg.n_heads - 1})"
            )
        heads.append((l, h))
    return heads
