"""Memory and time of the copying and skip-trigram analyses at d_vocab = 50,000.

A 50k x 50k fp32 matrix is 10,000 MB. Each measurement runs in a fresh subprocess that
builds the model, notes its peak resident set size (ru_maxrss: every byte torch touched,
which tracemalloc would miss), runs one analysis, and notes the peak again. A peak far
below 10,000 MB proves no vocab x vocab tensor was ever held.

Baselines ("dense-chunked"): the same reductions over the vocab x vocab circuits, formed a
chunk of rows at a time through the dense d_model x d_model W_OV / W_QK instead of the
d_head-wide factors. Dense eigenvalues of the vocab x vocab OV circuit cannot be run at
50k (10 GB, ~V^3 flops), so that comparison runs at --eig-vocab.

    python benchmarks/bench_circuits_memory.py [--vocab 50000] [--d-model 64] [--n-heads 4]
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time

import torch

from qkov import AttnOnlyTransformer, ModelConfig
from qkov.circuits import CHUNK_ELEMENTS, ov_circuit
from qkov.eigenvalues import eigenvalue_score, ov_eigenvalues, top1_self_fraction
from qkov.trigrams import skip_trigrams

K = 10


def build(vocab: int, d_model: int, n_heads: int) -> AttnOnlyTransformer:
    cfg = ModelConfig(
        n_layers=1, n_heads=n_heads, d_model=d_model, n_ctx=16, d_vocab=vocab, init_std=0.5, seed=0
    )
    return AttnOnlyTransformer(cfg)


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# ---------------------------------------------------------------------- dense-chunked baselines
def dense_top1(model: AttnOnlyTransformer) -> float:
    W = model.weights()
    E, U, V = W["W_E"], W["W_U"], W["W_E"].shape[0]
    ov = W["W_V"][0, 0] @ W["W_O"][0, 0]  # dense [d_model, d_model]
    chunk, hits = max(1, CHUNK_ELEMENTS // V), 0
    for s in range(0, V, chunk):
        block = (E[s : s + chunk] @ ov) @ U  # [c, V]
        idx = torch.arange(block.shape[0])
        own = block[idx, s + idx].clone()
        block[idx, s + idx] = float("-inf")
        hits += int((own > block.max(-1).values).sum())
    return hits / V


def dense_trigrams(model: AttnOnlyTransformer) -> list[float]:
    W = model.weights()
    E, U, V = W["W_E"], W["W_U"], W["W_E"].shape[0]
    qk = W["W_Q"][0, 0] @ W["W_K"][0, 0].T  # dense [d_model, d_model]
    ov = W["W_V"][0, 0] @ W["W_O"][0, 0]
    scale, chunk = 1 / math.sqrt(model.cfg.d_head), max(1, CHUNK_ELEMENTS // V)
    best_a, best_o = torch.full((V, 0), float("-inf")), []
    for s in range(0, V, chunk):
        block = (E[s : s + chunk] @ qk) @ E.T  # [c dest, V src]
        block = (block - block.mean(-1, keepdim=True)) * scale
        merged = torch.cat([best_a, block.T], 1)  # running column top-k, merged per chunk
        best_a = merged.topk(min(K, merged.shape[1]), 1)[0]
        rows = (E[s : s + chunk] @ ov) @ U  # [c src, V out]
        best_o.append((rows - rows.mean(-1, keepdim=True)).topk(K, 1)[0])
    cand = torch.sigmoid(best_a)[:, :, None] * torch.cat(best_o)[:, None, :]
    return cand.flatten().topk(K)[0].tolist()


def dense_eig(model: AttnOnlyTransformer) -> float:
    ov = ov_circuit(model, 0, 0).dense(force=True)  # vocab x vocab: small --eig-vocab only
    return eigenvalue_score(torch.linalg.eigvals(ov))


def factored_eig(model: AttnOnlyTransformer) -> float:
    return eigenvalue_score(ov_eigenvalues(model, 0, 0))


TASKS = {
    "eig factored": factored_eig,
    "eig dense vocab^2": dense_eig,
    "top1 factored": lambda m: top1_self_fraction(ov_circuit(m, 0, 0)),
    "top1 dense-chunked": dense_top1,
    "trigrams factored": lambda m: [t.score for t in skip_trigrams(m, 0, 0, K)],
    "trigrams dense-chunked": dense_trigrams,
}


def child(task: str, vocab: int, d_model: int, n_heads: int) -> None:
    torch.set_grad_enabled(False)
    TASKS[task](build(300, d_model, n_heads))  # warm-up: first-call library loading, not timed
    model = build(vocab, d_model, n_heads)
    before = maxrss_mb()
    t0 = time.perf_counter()
    result = TASKS[task](model)
    seconds = time.perf_counter() - t0
    print(
        json.dumps(
            {"seconds": seconds, "before_mb": before, "peak_mb": maxrss_mb(), "result": result}
        )
    )


def measure(task: str, vocab: int, d_model: int, n_heads: int) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        task,
        "--vocab",
        str(vocab),
        "--d-model",
        str(d_model),
        "--n-heads",
        str(n_heads),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab", type=int, default=50_000)
    p.add_argument("--eig-vocab", type=int, default=2_000)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--n-heads", type=int, default=4)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child, args.vocab, args.d_model, args.n_heads)
        return
    full_mb = args.vocab**2 * 4 / 2**20
    d_head = args.d_model // args.n_heads
    print(
        f"d_vocab={args.vocab:,} d_model={args.d_model} d_head={d_head}, torch threads="
        f"{torch.get_num_threads()}; one {args.vocab:,}^2 fp32 matrix = {full_mb:,.0f} MB"
    )
    print(
        f"{'task':<24}{'vocab':>8}{'time s':>9}{'model MB':>10}{'peak MB':>9}"
        f"{'+MB':>7}{'ratio':>8}  result"
    )
    rows = [
        ("eig", args.eig_vocab),
        ("top1", args.vocab),
        ("trigrams", args.vocab),
    ]
    for kind, vocab in rows:
        names = [n for n in TASKS if n.startswith(kind)]
        res = {n: measure(n, vocab, args.d_model, args.n_heads) for n in names}
        base = res[names[1]]["seconds"]
        for n in names:
            r = res[n]
            shown = (
                r["result"]
                if not isinstance(r["result"], list)
                else (f"top score {r['result'][0]:.4f}")
            )
            shown = f"{shown:.4f}" if isinstance(shown, float) else shown
            print(
                f"{n:<24}{vocab:>8,}{r['seconds']:>9.3f}{r['before_mb']:>10.0f}"
                f"{r['peak_mb']:>9.0f}{r['peak_mb'] - r['before_mb']:>7.0f}"
                f"{base / r['seconds']:>7.1f}x  {shown}"
            )
        if kind == "trigrams":
            a, b = res[names[0]]["result"], res[names[1]]["result"]
            agree = all(abs(x - y) <= 1e-3 * max(1.0, abs(y)) for x, y in zip(a, b, strict=True))
            print(f"{'':<24}top-{K} scores agree with the dense-chunked baseline: {agree}")
    eig = ov_eigenvalues(build(args.vocab, args.d_model, args.n_heads), 0, 0)
    print(
        f"\nat d_vocab={args.vocab:,}: eigenvalues from a {d_head}x{d_head} product "
        f"({eig.numel()} values); the dense vocab^2 route would need {full_mb:,.0f} MB."
    )
    print("ratio = baseline time / this row's time (higher is faster than the baseline).")


if __name__ == "__main__":
    main()
