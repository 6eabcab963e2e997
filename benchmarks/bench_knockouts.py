"""Induction partner knock-outs at GPT-2 small's shape: seconds, before and after sharing.

    python benchmarks/bench_knockouts.py [--heads L5H1,L6H9,L7H2,L7H10] [--skip-before]

A random model of GPT-2 small's shape (12 layers x 12 heads, d_model 768, MLPs of 3,072,
vocabulary 50,257) and `classify_heads`' probe (16 sequences of 128 random tokens ending in
a repeated block). A random model has no induction head, so the heads are named here: the
knock-outs' cost depends on where the induction heads are, not on their weights (a real
GPT-2 small has ~10 in layers 5-7). Rows:

    before      one forward pass per (earlier head, induction head) pair from the
                embedding, stopped at the induction head's pattern (qkov before
                `qkov.knockouts.knockouts`)
    shared      `knockouts`: one pass per earlier head for all the induction heads, begun
                at its layer from the clean stream
    budgeted    the same over `partner_knockouts`' cut (budget.PARTNER_BUDGET), as
                classify_heads runs it

The drops of `before` and `shared` are compared (they must agree to float rounding).
"""

from __future__ import annotations

import argparse
import re
import time

import torch

from qkov import ModelConfig, Transformer
from qkov.budget import knockout_cost, partner_knockouts
from qkov.data.probes import induction_probe
from qkov.heads import induction_score
from qkov.knockouts import knockouts


class _Stop(Exception):
    pass


@torch.no_grad()
def before(model, heads, tokens, half_len) -> dict:
    """The old algorithm: per induction head, one pass from the embedding per earlier head,
    each stopped at the induction head's pattern."""

    def score(l: int, h: int, hooks: dict) -> float:
        seen = {}

        def stop(x, name):
            seen["pattern"] = x
            raise _Stop

        try:
            model.run_with_hooks(tokens, hooks={**hooks, f"pattern.{l}": stop})
        except _Stop:
            pass
        return float(induction_score(seen["pattern"], tokens, half_len)[h])

    out = {}
    for l, h in heads:
        clean = score(l, h, {})
        for l0 in range(l):
            for h0 in range(model.cfg.n_heads):

                def zero(z, name, h0=h0):
                    z = z.clone()
                    z[:, h0] = 0
                    return z

                out[(l, h, l0, h0)] = clean - score(l, h, {f"z.{l0}": zero})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--heads", default="L5H1,L6H9,L7H2,L7H10")
    ap.add_argument("--skip-before", action="store_true")
    args = ap.parse_args()
    heads = [(int(a), int(b)) for a, b in re.findall(r"L(\d+)H(\d+)", args.heads)]
    torch.manual_seed(0)
    cfg = ModelConfig(
        n_layers=12, n_heads=12, d_model=768, d_mlp=3072, n_ctx=1024, d_vocab=50257,
        positional="standard", normalization="layernorm", act_fn="gelu", init_std=0.02,
    )  # fmt: skip
    model = Transformer(cfg).eval()
    probe = induction_probe(cfg.d_vocab, 16, 128, seed=0)
    tokens, half_len = probe.tokens, probe.half_lens
    last = max(l for l, _ in heads)
    every = [(l0, h0) for l0 in range(last) for h0 in range(cfg.n_heads)]
    cost = sum(knockout_cost(cfg, l0, last, tokens.numel(), tokens.shape[1]) for l0, _ in every)
    chosen = partner_knockouts(cfg, every[::-1], last, tokens.numel(), tokens.shape[1])
    print(
        f"# GPT-2-small-shaped random model; induction heads {args.heads}; probe "
        f"{tokens.shape[0]} x {tokens.shape[1]}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"# all {len(every)} earlier heads cost {cost / 2**40:.2f} x budget.PARTNER_BUDGET")
    print("| knock-outs | passes | seconds |")
    print("| --- | ---: | ---: |")
    t = time.perf_counter()
    shared = knockouts(model, heads, tokens, half_len)
    print(f"| shared, every earlier head | {len(every)} | {time.perf_counter() - t:.1f} |")
    t = time.perf_counter()
    knockouts(model, heads, tokens, half_len, candidates=chosen)
    print(
        f"| shared, budgeted (as classify_heads) | {len(chosen)} | {time.perf_counter() - t:.1f} |"
    )
    if not args.skip_before:
        t = time.perf_counter()
        old = before(model, heads, tokens, half_len)
        print(f"| before: one pass per pair | {len(old)} | {time.perf_counter() - t:.1f} |")
        diff = max(
            abs(p.drop - old[(l, h, p.layer, p.head)]) for (l, h), r in shared.items() for p in r
        )
        print(f"# max |drop difference| shared vs before: {diff:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
