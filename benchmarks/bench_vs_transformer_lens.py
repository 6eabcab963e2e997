"""Training speed against peers and against the hardware: qkov vs TransformerLens vs a plain
SDPA model, each as tokens/s and model FLOPs utilisation (MFU), in one process.

Columns, all on identical weights and batches (TL: the qkov model exported with
qkov.interop.to_hooked_transformer; plain: benchmarks/plain_model.py, the same architecture
written nanoGPT's way; attention-only, shortformer, or with --mlp the general model, where
the plain model has no column):

    TL            F.cross_entropy on TL's logits (faster than its return_type="loss")
    plain         F.cross_entropy on the plain model's logits
    qkov CE       F.cross_entropy on qkov's logits (qkov.loss.next_token_loss's way)
    qkov fused    model(x, targets): the unembedding fused with the loss (what `qkov train` runs)
    fused, SDPA   the same with PyTorch's attention instead of qkov's CPU kernel
                  (qkov.attention): what the kernel adds, in the same process

A step = forward + loss + backward + AdamW (PyTorch's fused AdamW, as `qkov train` runs it;
every column the same optimizer), on a batch of n_ctx + 1 tokens as qkov.train feeds it.
MFU = qkov.flops.train_step_flops(config) / step time / matmul peak, where the peak
(qkov.flops.matmul_peak: fp32 2048^2 matmuls) is re-measured in every round, so each
round's MFU divides by the rate the machine gave in that same round.

Rounds are interleaved (each round runs every column once, in a rotated order) so that load
from other processes hits all columns alike, and continue until every ratio's 95% interval
for the median (order statistics, distribution-free) is within +-5% of it, or --max-rounds.
The table shows medians and, as the spread, that interval.

    python benchmarks/bench_vs_transformer_lens.py [--min-rounds 7] [--max-rounds 40]
        [--threads 2] [--quick] [--mlp] [--profile] [--allocator kept|default]

The process keeps freed memory as `qkov train` does on a CPU (qkov.allocator); with
--allocator default it runs on glibc's own thresholds (the A/B of that setting: run both).
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from qkov import ModelConfig, Transformer
from qkov.allocator import keep_freed_memory
from qkov.attention import kernel_enabled
from qkov.flops import matmul_peak, train_step_flops

sys.path.insert(0, str(Path(__file__).parent))
from plain_model import PlainSDPA  # noqa: E402


@dataclass(frozen=True)
class Case:
    d_model: int
    n_heads: int
    d_vocab: int
    n_ctx: int
    batch: int
    n_layers: int = 2
    d_mlp: int = 0  # > 0: the general model (MLPs, biases, LayerNorm, standard positions)

    @property
    def label(self) -> str:
        mlp = f" mlp{self.d_mlp} LN" if self.d_mlp else ""
        return (
            f"L{self.n_layers} d{self.d_model}{mlp} h{self.n_heads} V{self.d_vocab} "
            f"ctx{self.n_ctx} b{self.batch}"
        )

    def config(self) -> ModelConfig:
        shape = dict(
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            d_model=self.d_model,
            n_ctx=self.n_ctx,
            d_vocab=self.d_vocab,
        )
        if not self.d_mlp:
            return ModelConfig(**shape, positional="shortformer")
        general = dict(d_mlp=self.d_mlp, act_fn="gelu", bias=True, normalization="layernorm")
        return ModelConfig(**shape, **general, positional="standard")


CASES = [Case(128, 4, 2048, 128, 32), Case(256, 8, 4096, 256, 16)]
MLP_CASES = [Case(128, 4, 2048, 128, 32, d_mlp=512)]


def train_step(
    model: torch.nn.Module, batch: torch.Tensor, fused: bool = False, kernel: bool = True
) -> Callable[[], None]:
    """One AdamW step on batch [batch, n_ctx + 1]: inputs batch[:, :-1], next-token targets
    batch[:, 1:]. fused: the model takes targets and returns the loss (qkov); kernel=False:
    qkov's attention is PyTorch's SDPA, not its CPU kernel."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # as qkov.train's
    x, y = batch[:, :-1], batch[:, 1:]

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with kernel_enabled(kernel):
            if fused:
                loss = model(x, y)
            else:
                loss = F.cross_entropy(model(x).flatten(0, 1).float(), y.flatten())
            loss.backward()
        opt.step()

    return step


def median_interval(values: list[float]) -> tuple[float, float, float]:
    """(median, low, high): a distribution-free ~95% interval for the median, from order
    statistics (k = floor((n - 1.96 sqrt(n)) / 2) values cut from each end)."""
    v = sorted(values)
    k = max(0, math.floor((len(v) - 1.96 * math.sqrt(len(v))) / 2))
    return statistics.median(v), v[k], v[len(v) - 1 - k]


def stable(values: list[float], tolerance: float = 0.05) -> bool:
    med, lo, hi = median_interval(values)
    return lo >= med * (1 - tolerance) and hi <= med * (1 + tolerance)


def rounds(
    steps: dict[str, Callable[[], None]],
    ratios: dict[str, tuple[str, str]],
    min_rounds: int,
    max_rounds: int,
) -> tuple[dict[str, list[float]], dict[str, list[float]], list[float]]:
    """Interleaved rounds: each round measures the matmul peak, then runs every step once in
    a rotated order. Stops when every ratio (name: (numerator, denominator) of speed) is
    stable to +-5%. Returns (seconds per step, ratios, peaks), per round."""
    names = list(steps)
    for n in names:  # warm-up
        steps[n]()
    times: dict[str, list[float]] = {n: [] for n in names}
    peaks: list[float] = []
    rat: dict[str, list[float]] = {r: [] for r in ratios}
    for r in range(max_rounds):
        peaks.append(matmul_peak(reps=3))
        for n in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            steps[n]()
            times[n].append(time.perf_counter() - t0)
        for key, (a, b) in ratios.items():
            rat[key].append(times[b][-1] / times[a][-1])
        if r + 1 >= min_rounds and all(stable(v) for v in rat.values()):
            break
    return times, rat, peaks


def run_case(case: Case, min_rounds: int, max_rounds: int) -> None:
    cfg = case.config()
    qkov_model = Transformer(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from qkov.interop import to_hooked_transformer

        tl_model = to_hooked_transformer(qkov_model).train()
    batch = torch.randint(
        0, case.d_vocab, (case.batch, case.n_ctx + 1), generator=torch.Generator()
    )
    x = batch[:, :-1]
    with torch.no_grad():  # same weights -> same logits, checked before timing
        err = (qkov_model(x) - tl_model(x)).abs().max().item()
    assert err < 1e-4, f"qkov and TL disagree by {err}"
    steps = {"TL": train_step(tl_model, batch)}
    if not case.d_mlp:
        steps["plain"] = train_step(PlainSDPA(cfg), batch)
    steps["qkov CE"] = train_step(qkov_model, batch)
    steps["qkov fused"] = train_step(Transformer(cfg), batch, fused=True)
    steps["fused, SDPA"] = train_step(Transformer(cfg), batch, fused=True, kernel=False)
    ratios = {
        "qkov CE / plain": ("qkov CE", "plain"),
        "qkov fused / TL": ("qkov fused", "TL"),
        "kernel / SDPA (fused)": ("qkov fused", "fused, SDPA"),
    }
    ratios = {k: v for k, v in ratios.items() if v[1] in steps}
    times, rat, peaks = rounds(steps, ratios, min_rounds, max_rounds)
    flops, n_tok = train_step_flops(cfg, case.batch), case.batch * case.n_ctx
    med_peak, lo_peak, hi_peak = median_interval(peaks)
    print(
        f"\n{case.label}: {len(peaks)} rounds, {flops / 1e9:.1f} GFLOP/step, matmul peak "
        f"{med_peak / 1e9:.0f} GFLOP/s [{lo_peak / 1e9:.0f}-{hi_peak / 1e9:.0f}]"
    )
    print("| column | tok/s | MFU [95% interval] |")
    print("| --- | ---: | --- |")
    for n, t in times.items():
        med, lo, hi = median_interval([flops / (s * p) for s, p in zip(t, peaks, strict=True)])
        print(f"| {n} | {n_tok / statistics.median(t):,.0f} | {med:.0%} [{lo:.0%}-{hi:.0%}] |")
    for key, v in rat.items():
        med, lo, hi = median_interval(v)
        print(f"{key}: {med:.2f}x [{lo:.2f}-{hi:.2f}]" + ("" if stable(v) else " (not stable)"))


def profile_case(case: Case, fused: bool, rows: int = 12) -> None:
    """torch.profiler's top entries (self CPU time) over 5 training steps of qkov."""
    from torch.profiler import ProfilerActivity, profile

    model = Transformer(case.config())
    batch = torch.randint(
        0, case.d_vocab, (case.batch, case.n_ctx + 1), generator=torch.Generator()
    )
    step = train_step(model, batch, fused=fused)
    for _ in range(2):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(5):
            step()
    print(f"\nprofile {case.label}, qkov {'fused' if fused else 'CE'}, 5 steps")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--min-rounds", type=int, default=7)
    ap.add_argument("--max-rounds", type=int, default=40)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--quick", action="store_true", help="first config only, 3-5 rounds")
    ap.add_argument("--mlp", action="store_true", help="the MLP + LayerNorm + bias model")
    ap.add_argument("--profile", action="store_true", help="torch.profiler top entries instead")
    ap.add_argument(
        "--allocator",
        choices=("kept", "default"),
        default="kept",
        help="kept: qkov.allocator.keep_freed_memory(), as qkov train sets it on a CPU (every "
        "column runs in this process, so all get it); default: glibc's own thresholds",
    )
    args = ap.parse_args()
    if args.allocator == "kept" and not keep_freed_memory():
        print("# qkov.allocator.keep_freed_memory() did not take (not glibc): default allocator")
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = MLP_CASES if args.mlp else CASES
    if args.quick:
        cases, args.min_rounds, args.max_rounds = cases[:1], 3, 5
    if args.profile:
        for case in cases:
            for fused in (False, True):
                profile_case(case, fused)
        return
    from importlib.metadata import version

    print(
        f"# torch {torch.__version__}, transformer-lens {version('transformer-lens')}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
        "medians of interleaved rounds; MFU = qkov.flops.train_step_flops / time / peak; "
        f"allocator {args.allocator}"
    )
    for case in cases:
        run_case(case, args.min_rounds, args.max_rounds)


if __name__ == "__main__":
    main()
