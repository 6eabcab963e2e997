"""qkov vs TransformerLens: forward and training tokens/s on identical weights.

Both models run in this process on the same weights (the qkov model exported with
qkov.interop.to_hooked_transformer: attn_only and shortformer by default; with --mlp, the
general model: MLPs (gelu), biases, LayerNorm, standard positions). Repetitions are interleaved
(qkov, TL, TL, qkov, ...) so that load from other processes hits both alike; the table
reports the median per-step time as tokens/s and the ratio qkov / TL.

    python benchmarks/bench_vs_transformer_lens.py [--reps 15] [--threads 2] [--quick] [--mlp]

Training step = forward + next-token cross-entropy + backward + AdamW step, on a batch of
n_ctx + 1 tokens as qkov.train feeds it. Mode "train": each side's fastest loss, qkov's
`model(x, targets)` (unembed fused with the loss, qkov.loss; what `qkov train` runs) vs
`F.cross_entropy` on TL's logits (faster than TL's own return_type="loss"). Mode
"train-unfused": the same `F.cross_entropy` on both sides' logits (qkov.loss.next_token_loss).
TL's model also trains its (zero-initialised) biases, as TL users' models do (with --mlp
both sides train biases). "peak" is the share of the measured float32 matmul rate (a
[tokens, d_model] @ [d_model, d_mlp or d_model] product in this process) that the step's
dense matmul FLOPs reach: 6 x tokens x matmul weights, plus 12 x n_ctx x d_model per token
and layer for attention scores and mixing (causal masking not discounted).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from qkov import AttnOnlyTransformer, ModelConfig
from qkov.interop import to_hooked_transformer


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

    def train_flops(self) -> float:
        """Dense matmul FLOPs of one training step (forward + backward = 3 x forward)."""
        D, L, n = self.d_model, self.n_layers, self.n_ctx
        weights = L * (4 * D * D + 2 * D * self.d_mlp) + D * self.d_vocab
        attention = L * 2 * n * D  # q k^T and pattern v: 2 n D multiply-adds per token
        return 6 * self.batch * n * (weights + attention)


CASES = [Case(128, 4, 2048, 128, 32), Case(256, 8, 4096, 256, 16)]
MLP_CASES = [Case(128, 4, 2048, 128, 32, d_mlp=512)]


def matmul_rate(case: Case, reps: int = 10) -> float:
    """Measured float32 FLOP/s of a [tokens, d_model] @ [d_model, d_mlp or d_model] matmul."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(case.batch * case.n_ctx, case.d_model, generator=g)
    b = torch.randn(case.d_model, case.d_mlp or case.d_model, generator=g)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * a.shape[0] * a.shape[1] * b.shape[1] * reps / (time.perf_counter() - t0)


def make_steps(
    model: torch.nn.Module, batch: torch.Tensor, fused: bool = False
) -> dict[str, Callable[[], None]]:
    """batch [batch, n_ctx + 1]: inputs batch[:, :-1], next-token targets batch[:, 1:].
    fused: the model takes targets and returns the loss (qkov)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, y = batch[:, :-1], batch[:, 1:]

    def forward() -> None:
        with torch.no_grad():
            model(x)

    def train_unfused() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x).flatten(0, 1).float(), y.flatten()).backward()
        opt.step()

    def train() -> None:  # as qkov.train does it, minus clipping and logging
        if not fused:
            return train_unfused()
        opt.zero_grad(set_to_none=True)
        model(x, y).backward()
        opt.step()

    return {"forward": forward, "train": train, "train-unfused": train_unfused}


def interleaved(fns: dict[str, Callable[[], None]], reps: int, warmup: int = 2) -> dict:
    """Median seconds per call of each fn, alternating the order every repetition."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(reps):
        for n in names if r % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            fns[n]()
            times[n].append(time.perf_counter() - t0)
    return {n: (statistics.median(t), statistics.quantiles(t, n=4)) for n, t in times.items()}


def run_case(case: Case, reps: int) -> list[tuple[str, str, float, float, float, str]]:
    qkov_model = AttnOnlyTransformer(case.config())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tl_model = to_hooked_transformer(qkov_model).train()
    batch = torch.randint(
        0, case.d_vocab, (case.batch, case.n_ctx + 1), generator=torch.Generator()
    )
    with torch.no_grad():  # same weights -> same logits, checked before timing
        err = (qkov_model(batch[:, :-1]) - tl_model(batch[:, :-1])).abs().max().item()
    assert err < 1e-4, f"qkov and TL disagree by {err}"
    q, t = make_steps(qkov_model, batch, fused=True), make_steps(tl_model, batch)
    rows = []
    n_tok = case.batch * case.n_ctx
    for mode in ("forward", "train", "train-unfused"):
        res = interleaved({"qkov": q[mode], "tl": t[mode]}, reps)
        (mq, iq), (mt, it) = res["qkov"], res["tl"]
        spread = (
            f"IQR qkov {iq[0] * 1e3:.0f}-{iq[2] * 1e3:.0f} ms, "
            f"TL {it[0] * 1e3:.0f}-{it[2] * 1e3:.0f} ms"
        )
        if mode == "train":
            rate = matmul_rate(case)
            peak = case.train_flops() / rate
            spread += f"; peak qkov {peak / mq:.0%}, TL {peak / mt:.0%} of {rate / 1e9:.0f} GFLOP/s"
        rows.append((case.label, mode, n_tok / mq, n_tok / mt, mt / mq, spread))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=15, help="timed repetitions per model and mode")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--quick", action="store_true", help="first config only, 5 reps")
    ap.add_argument("--mlp", action="store_true", help="the MLP + LayerNorm + bias model")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = MLP_CASES if args.mlp else CASES
    cases, reps = (cases[:1], 5) if args.quick else (cases, args.reps)
    from importlib.metadata import version

    print(
        f"# torch {torch.__version__}, transformer-lens {version('transformer-lens')}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
        f"{reps} interleaved reps, median"
    )
    print("| config | mode | qkov tok/s | TL tok/s | qkov / TL | spread |")
    print("| --- | --- | ---: | ---: | ---: | --- |")
    for case in cases:
        for label, mode, q, t, ratio, spread in run_case(case, reps):
            print(
                f"| {label} | {mode} | {q:,.0f} | {t:,.0f} | {ratio:.2f}x | {spread} |", flush=True
            )


if __name__ == "__main__":
    main()
