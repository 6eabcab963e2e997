"""Analysis speed: qkov's factored forms vs the straightforward dense way, as ratios.

1. All-heads OV eigenvalues: qkov (d_head x d_head per head, batched over heads) vs the
   dense d_model x d_model W_OV W_U W_E per head vs the vocab x vocab W_E W_OV W_U per
   head (only at a small vocabulary: 50k x 50k is 10 GB and ~V^3 flops).
2. Composition scores (Q, K, V for all pairs): qkov.composition_scores vs dense
   d_model x d_model products per pair, and TransformerLens's all_composition_scores.
3. Full-vocabulary copying (top-1 self fraction) at d_vocab 50k, one head: qkov's chunked
   factored rows vs the dense-chunked baseline of benchmarks/bench_circuits_memory.py
   (memory is measured there). Yardstick: the FLOP floor 2 V^2 d_head per head, at the
   matmul rate measured here on the same shapes.

Each comparison checks that both ways give the same answer, then interleaves repetitions
and reports medians.

    python benchmarks/bench_analysis.py [--reps 5] [--vocab 50000] [--small-vocab 512]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from qkov import AttnOnlyTransformer, ModelConfig
from qkov.composition import composition_scores
from qkov.eigenvalues import top1_self_fraction
from qkov.factored import FactoredMatrix

sys.path.insert(0, str(Path(__file__).parent))
from bench_circuits_memory import dense_top1  # noqa: E402  (the circuits engineer's baseline)


def timed(fns: dict[str, Callable[[], object]], reps: int, warmup: bool = True) -> dict[str, float]:
    """Median seconds per call, order alternated each repetition (after one warm-up)."""
    for f in fns.values() if warmup else ():
        f()
    times: dict[str, list[float]] = {n: [] for n in fns}
    names = list(fns)
    for r in range(reps):
        for n in names if r % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            fns[n]()
            times[n].append(time.perf_counter() - t0)
    return {n: statistics.median(t) for n, t in times.items()}


def model_of(vocab: int, d_model: int, n_heads: int, n_layers: int) -> AttnOnlyTransformer:
    cfg = ModelConfig(
        n_layers=n_layers, n_heads=n_heads, d_model=d_model, n_ctx=64, d_vocab=vocab, init_std=0.5
    )
    return AttnOnlyTransformer(cfg)


def same_spectrum(a: torch.Tensor, b: torch.Tensor, tol: float) -> bool:
    """Every eigenvalue in a has one within tol in b (relative to the largest)."""
    scale = max(float(a.abs().max()), 1e-30)
    return bool(((a[:, None] - b[None, :]).abs().min(-1).values <= tol * scale).all())


# ---------------------------------------------------------------------------- 1. eigenvalues
def bench_eigenvalues(model: AttnOnlyTransformer, reps: int, with_vocab: bool) -> list[tuple]:
    W = {k: v.double() for k, v in model.weights().items()}
    L, H = model.cfg.n_layers, model.cfg.n_heads
    E, U = W["W_E"], W["W_U"]

    def factored() -> torch.Tensor:  # [L, H, d_head]
        return FactoredMatrix(E @ W["W_V"], W["W_O"] @ U).eigenvalues

    def dense_dmodel() -> list[torch.Tensor]:  # W_OV W_U W_E, d_model x d_model, per head
        UE = U @ E
        return [
            torch.linalg.eigvals(W["W_V"][l, h] @ W["W_O"][l, h] @ UE)
            for l in range(L)
            for h in range(H)
        ]

    def dense_vocab_one_head() -> torch.Tensor:
        return torch.linalg.eigvals(E @ W["W_V"][0, 0] @ W["W_O"][0, 0] @ U)

    fac = factored()
    assert same_spectrum(fac[0, 0], dense_dmodel()[0], 1e-6), "factored != d_model eigenvalues"
    t = timed({"factored": factored, "dense d_model": dense_dmodel}, reps)
    if with_vocab:  # one timed run: LAPACK is slow on these rank-d_head vocab x vocab matrices
        t0 = time.perf_counter()
        big = dense_vocab_one_head()
        t["dense vocab (1 head)"] = time.perf_counter() - t0
        assert same_spectrum(fac[0, 0], big, 1e-6), "factored != vocab x vocab eigenvalues"
    n = L * H
    rows = [
        ("all-heads OV eigenvalues", "dense d_model x d_model", t["dense d_model"], t["factored"])
    ]
    if with_vocab:
        rows.append(
            (
                "all-heads OV eigenvalues",
                f"dense vocab x vocab (1 head, 1 run, x {n})",
                t["dense vocab (1 head)"] * n,
                t["factored"],
            )
        )
    return rows


# ---------------------------------------------------------------------------- 2. composition
def dense_composition(model: AttnOnlyTransformer) -> dict[str, torch.Tensor]:
    """The textbook way: d_model x d_model W_OV, W_QK per head, then a norm per pair."""
    W = model.weights()
    OV = W["W_V"] @ W["W_O"]  # [L, H, D, D]
    QK = W["W_Q"] @ W["W_K"].transpose(-1, -2)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    out = {k: torch.full((L, H, L, H), float("nan")) for k in "qkv"}
    for l0 in range(L):
        for h0 in range(H):
            A = OV[l0, h0]
            for l1 in range(l0 + 1, L):
                for h1 in range(H):
                    for kind, B in (("q", QK[l1, h1]), ("k", QK[l1, h1].T), ("v", OV[l1, h1])):
                        out[kind][l0, h0, l1, h1] = (A @ B).norm() / (A.norm() * B.norm())
    return out


def bench_composition(model: AttnOnlyTransformer, reps: int) -> list[tuple]:
    ours = composition_scores(model, n_baseline=2)
    dense = dense_composition(model)
    for kind in "qkv":
        torch.testing.assert_close(ours.get(kind), dense[kind], atol=1e-5, rtol=0, equal_nan=True)
    fns: dict[str, Callable[[], object]] = {
        "qkov": lambda: composition_scores(model, n_baseline=2),
        "dense": lambda: dense_composition(model),
    }
    try:
        from qkov.interop import to_hooked_transformer

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hooked = to_hooked_transformer(model)

        def tl_all() -> None:
            for kind in "QKV":
                hooked.all_composition_scores(kind)

        fns["TL"] = tl_all
    except Exception as e:  # TL is optional: report without it
        print(f"# TransformerLens column skipped: {e}")
    t = timed(fns, reps)
    rows = [("composition scores Q+K+V", "dense d_model x d_model per pair", t["dense"], t["qkov"])]
    if "TL" in t:
        rows.append(("composition scores Q+K+V", "TL all_composition_scores", t["TL"], t["qkov"]))
    return rows


# ---------------------------------------------------------------------------- 3. copying
def matmul_rate(V: int, d_head: int) -> float:
    """FLOP/s of [chunk, d_head] @ [d_head, V] products, the shape top-1 copying runs."""
    a, b = torch.randn(1024, d_head), torch.randn(d_head, V)
    a @ b
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < 1.0:
        a @ b
        n += 1
    return 2 * 1024 * d_head * V * n / (time.perf_counter() - t0)


def bench_copying(model: AttnOnlyTransformer, reps: int) -> tuple[list[tuple], str]:
    from qkov.circuits import ov_circuit

    V, d_head = model.cfg.d_vocab, model.cfg.d_head
    circuit = ov_circuit(model, 0, 0)
    with torch.no_grad():
        a, b = top1_self_fraction(circuit), dense_top1(model)
    assert abs(a - b) < 1e-3, f"top-1 fractions disagree: {a} vs {b}"
    # No warm-up: the correctness check above already ran both once.
    t = timed(
        {"qkov": lambda: top1_self_fraction(circuit), "dense": lambda: dense_top1(model)},
        reps,
        warmup=False,
    )
    rate = matmul_rate(V, d_head)
    floor = 2 * V * V * d_head / rate
    note = (
        f"FLOP floor 2 V^2 d_head = {2 * V * V * d_head / 1e9:.0f} GFLOP at the measured "
        f"{rate / 1e9:.1f} GFLOP/s = {floor:.2f} s; qkov {t['qkov']:.2f} s "
        f"= {floor / t['qkov']:.0%} of the floor rate"
    )
    rows = [
        (
            f"top-1 copying, V={V:,}, 1 head",
            "dense-chunked (bench_circuits_memory)",
            t["dense"],
            t["qkov"],
        )
    ]
    return rows, note


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--vocab", type=int, default=50_000)
    ap.add_argument("--small-vocab", type=int, default=512)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--n-heads", type=int, default=4)
    ap.add_argument("--n-layers", type=int, default=2)
    ap.add_argument("--copy-reps", type=int, default=2)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    D, H, L = args.d_model, args.n_heads, args.n_layers
    print(
        f"# torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"model L{L} d{D} h{H} (d_head {D // H}), medians of interleaved reps"
    )
    print("| analysis | baseline | baseline s | qkov s | speed-up |")
    print("| --- | --- | ---: | ---: | ---: |")

    def show(rows: list[tuple], suffix: str = "") -> None:
        for what, base, tb, tq in rows:
            print(f"| {what}{suffix} | {base} | {tb:.4f} | {tq:.4f} | {tb / tq:.1f}x |", flush=True)

    small = model_of(args.small_vocab, D, H, L)
    show(bench_eigenvalues(small, args.reps, with_vocab=True), f" (V={args.small_vocab:,})")
    big = model_of(args.vocab, D, H, L)
    show(bench_eigenvalues(big, args.reps, with_vocab=False), f" (V={args.vocab:,})")
    show(bench_composition(big, args.reps))
    copy_rows, note = bench_copying(model_of(args.vocab, 64, 4, 1), args.copy_reps)
    show(copy_rows)
    print(f"\ncopying (d_model 64, d_head 16): {note}")


if __name__ == "__main__":
    main()
