"""Analysis at scale: qkov's analyses on a 12-layer x 12-head model with a 50k vocabulary,
against TransformerLens's equivalents where they exist, as ratios in one run.

    python benchmarks/bench_analysis_scale.py [--vocab 50257] [--reps 3] [--threads 0]

The model is random (init_std 0.5, d_model 768, d_head 64, n_ctx 256, shortformer), GPT-2
small's shape without MLPs; TL's copy comes from qkov.interop.to_hooked_transformer, so both
libraries read the same weights. Rows:

    composition_scores       vs TL all_composition_scores("Q"), ("K"), ("V")
    OV eigenvalues, all      qkov ov_eigenvalues(l, h) for every head (d_head x d_head
                             W_O (W_U W_E) W_V, W_U W_E formed once per model), and the
                             generic ov_circuit(l, h).eigenvalues (W_E W_OV W_U kept
                             factored: two d_vocab-sized products per head), each vs TL
                             (W_E @ model.OV @ W_U).eigenvalues
    classify_heads           vs TL detect_head for previous-token, duplicate-token and
                             induction heads on the same 16 repeated-token sequences
    ov_statistics (1 head)   eigenvalues + the full-vocabulary top-1 self fraction (V^2 d_head)
    skip_trigrams (1 head)   top 10 over all (source, destination, out) of one head
    path_expansion           16 tokens, max_order 1: the direct term + 144 heads' terms

Each time is the median of --reps calls (interleaved with TL's where TL has one), after a
warm-up call (--reps 1: one cold call each); agreement with TL is checked before timing
where both compute one number.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from qkov import ModelConfig, Transformer
from qkov.circuits import ov_circuit
from qkov.classification import classify_heads
from qkov.composition import composition_scores
from qkov.data.probes import induction_probe
from qkov.eigenvalues import ov_eigenvalues, ov_statistics
from qkov.paths import path_expansion
from qkov.trigrams import skip_trigrams

sys.path.insert(0, str(Path(__file__).parent))
from bench_analysis import timed  # noqa: E402  (median of interleaved calls)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = ModelConfig(
        n_layers=12, n_heads=12, d_model=768, n_ctx=256, d_vocab=args.vocab, init_std=0.5
    )
    model = Transformer(cfg).eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from transformer_lens.head_detector import detect_head

            from qkov.interop import to_hooked_transformer

            tl = to_hooked_transformer(model)
        # token ids in, as qkov takes them (a list of [1, pos] sequences: their rows)
        tl.to_tokens = lambda seq, **kw: torch.cat(seq) if isinstance(seq, list) else seq
    except ImportError as e:
        print(f"TransformerLens not importable ({e}): qkov rows only")
        tl = None
    probe = induction_probe(cfg.d_vocab, 16, 128, seed=0)
    L, H = cfg.n_layers, cfg.n_heads
    print(
        f"# torch {torch.__version__}, {torch.get_num_threads()} threads; model L{L} H{H} "
        f"d{cfg.d_model} V{cfg.d_vocab}; median of {args.reps}"
    )
    print("| analysis | qkov s | TL s | TL / qkov |")
    print("| --- | ---: | ---: | ---: |")

    def row(name: str, qkov: Callable[[], object], peer: Callable[[], object] | None) -> None:
        fns = {"qkov": qkov} | ({"tl": peer} if peer is not None and tl is not None else {})
        t = timed(fns, args.reps, warmup=args.reps > 1)
        if "tl" in t:
            print(f"| {name} | {t['qkov']:.2f} | {t['tl']:.2f} | {t['tl'] / t['qkov']:.1f}x |")
        else:
            print(f"| {name} | {t['qkov']:.2f} | - | - |", flush=True)

    with torch.no_grad():
        if tl is not None:  # same weights, same numbers: checked before timing
            ours = composition_scores(model, n_baseline=10).k
            theirs = tl.all_composition_scores("K")
            err = max(
                abs(float(ours[l1, h1, l2, h2]) - float(theirs[l1, h1, l2, h2]))
                for l1, h1, l2, h2 in [(0, 0, 1, 0), (3, 5, 7, 2), (10, 11, 11, 4)]
            )
            assert err < 1e-4, f"K-composition disagrees with TL by {err}"

        row(
            "composition_scores (Q, K, V + baseline)",
            lambda: composition_scores(model),
            lambda: [tl.all_composition_scores(m) for m in "QKV"],
        )
        if tl is not None:  # the spectrum of one head, both ways, against TL's
            theirs = (tl.W_E @ tl.OV[3, 5] @ tl.W_U).eigenvalues.abs().sort().values
            for ours in (ov_eigenvalues(model, 3, 5), ov_circuit(model, 3, 5).eigenvalues):
                err = float(((ours.abs().sort().values - theirs).abs() / theirs.abs().max()).max())
                assert err < 1e-3, f"OV eigenvalues disagree with TL by {err} (relative)"
        row(
            "OV eigenvalues, all 144 heads: ov_eigenvalues (W_U W_E formed once)",
            lambda: [ov_eigenvalues(model, l, h) for l in range(L) for h in range(H)],
            lambda: (tl.W_E @ tl.OV @ tl.W_U).eigenvalues,
        )
        row(
            "OV eigenvalues, all 144 heads: ov_circuit(l, h).eigenvalues (generic factored)",
            lambda: [ov_circuit(model, l, h).eigenvalues for l in range(L) for h in range(H)],
            lambda: (tl.W_E @ tl.OV @ tl.W_U).eigenvalues,
        )
        seqs = [s[None] for s in probe.tokens]
        kinds = ("previous_token_head", "duplicate_token_head", "induction_head")
        row(
            "classify_heads (16 probe sequences)",
            lambda: classify_heads(model),
            lambda: [detect_head(tl, seqs, kind) for kind in kinds],
        )
        row("ov_statistics, 1 head (full-vocab top-1)", lambda: ov_statistics(model, 5, 3), None)
        row("skip_trigrams, 1 head (top 10)", lambda: skip_trigrams(model, 0, 3, k=10), None)
        tokens = probe.tokens[:1, :16]
        row(
            "path_expansion (16 tokens, order <= 1)", lambda: path_expansion(model, tokens, 1), None
        )


if __name__ == "__main__":
    main()
