"""qkov on a GPU, against the GPU's own limit, in one command with a hard time budget.

    python3 benchmarks/gpu.py --out gpu.json [--budget 210] [--tiny] [--device cuda]

1. The bf16 matmul peak: qkov.flops.matmul_peak (8192^2 products, the fastest of 10).
2. bf16 training MFU of qkov (d_model 1024, 16 heads, vocab 50257, ctx 1024, 4 layers,
   attention-only, shortformer; batch 16): the step `qkov train` runs (autocast bf16, fused
   unembedding + loss, backward, AdamW), FLOPs from qkov.flops.train_step_flops over the
   peak measured in the same run. Also the general model (d_mlp 4096, LayerNorm, biases,
   standard positions) at the same sizes.
3. qkov against TransformerLens on the same weights (qkov.interop.to_hooked_transformer),
   both under autocast bf16, TL with F.cross_entropy on its logits; rounds interleaved.
4. Peak memory (torch.cuda.max_memory_allocated) of a training step with the fused loss
   against the same model with F.cross_entropy on materialised logits.

Every step time is the median over interleaved rounds (each round: every column once);
a section that would run past --budget seconds is cut short and says so. Prints a table
and writes everything as JSON to --out. --tiny: a small config on any device (the CPU
test of this script: tests/test_gpu_benchmark.py). If TransformerLens cannot be imported,
section 3 prints "TransformerLens not importable: skipped".

On a machine without the `datasets` package (TransformerLens imports it for its data
helpers, which this script never calls), a stand-in module is registered so that
`import transformer_lens` succeeds; pyarrow alone would be 40 MB.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import types
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from qkov import ModelConfig, Transformer
from qkov.flops import matmul_peak, train_step_flops

sys.path.insert(0, str(Path(__file__).parent))
from bench_vs_transformer_lens import median_interval  # noqa: E402

SIZES = dict(d_model=1024, n_heads=16, d_vocab=50257, n_ctx=1024, n_layers=4)
TINY = dict(d_model=64, n_heads=4, d_vocab=512, n_ctx=64, n_layers=2)
GENERAL = dict(act_fn="gelu", bias=True, normalization="layernorm", positional="standard")


class Clock:
    """The run's hard time budget: sections ask how much is left before each round."""

    def __init__(self, budget: float) -> None:
        self.end = time.perf_counter() + budget

    def left(self) -> float:
        return self.end - time.perf_counter()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step(
    model: torch.nn.Module, batch: torch.Tensor, device: torch.device, fused: bool
) -> Callable[[], None]:
    """One step as `qkov train` runs it: autocast bf16 on a GPU, loss, backward, AdamW."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # as qkov.train's
    x, y = batch[:, :-1], batch[:, 1:]
    gpu = device.type == "cuda"

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=gpu):
            if fused:
                loss = model(x, y)
            else:
                loss = F.cross_entropy(model(x).flatten(0, 1).float(), y.flatten())
        loss.backward()
        opt.step()

    return step


def timed_rounds(
    steps: dict[str, Callable[[], None]], device: torch.device, clock: Clock, rounds: int
) -> dict[str, list[float]]:
    """Seconds per step of each column, over up to `rounds` interleaved rounds (fewer if
    the budget runs out; at least one after the warm-up)."""
    names = list(steps)
    for n in names:  # warm-up: kernels chosen, optimizer state allocated
        steps[n]()
    sync(device)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        started = time.perf_counter()
        for n in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            steps[n]()
            sync(device)
            times[n].append(time.perf_counter() - t0)
        if clock.left() < 2 * (time.perf_counter() - started):
            break
    return times


def summary(seconds: list[float], flops: float, tokens: int, peak: float) -> dict[str, Any]:
    med, lo, hi = median_interval(seconds)
    return {
        "rounds": len(seconds),
        "step_ms": round(med * 1e3, 3),
        "step_ms_interval": [round(lo * 1e3, 3), round(hi * 1e3, 3)],
        "tokens_per_s": round(tokens / med, 1),
        "mfu": round(flops / med / peak, 4),
    }


def import_transformer_lens() -> Any:
    """transformer_lens, or None; with a stand-in for `datasets` where that is missing."""
    try:
        import datasets  # noqa: F401
    except ImportError:
        stand_in = {
            "datasets": types.ModuleType("datasets"),
            "datasets.arrow_dataset": types.ModuleType("datasets.arrow_dataset"),
            "datasets.iterable_dataset": types.ModuleType("datasets.iterable_dataset"),
            "datasets.load": types.ModuleType("datasets.load"),
        }

        def load_dataset(*args: Any, **kwargs: Any) -> Any:
            raise ImportError("datasets is not installed (stand-in from benchmarks/gpu.py)")

        stand_in["datasets.arrow_dataset"].Dataset = type("Dataset", (), {})
        stand_in["datasets.iterable_dataset"].IterableDataset = type("IterableDataset", (), {})
        stand_in["datasets.load"].load_dataset = load_dataset
        stand_in["datasets"].load_dataset = load_dataset
        stand_in["datasets"].Dataset = stand_in["datasets.arrow_dataset"].Dataset
        sys.modules.update(stand_in)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import transformer_lens

        return transformer_lens
    except Exception as e:  # any failure of a third-party import: report and go on
        print(f"TransformerLens not importable: skipped ({type(e).__name__}: {e})")
        return None


def peak_memory(step: Callable[[], None], device: torch.device) -> int | None:
    """Bytes allocated at the peak of one step, above what was allocated before it."""
    if device.type != "cuda":
        return None
    step()  # optimizer state exists before the measured step
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    step()
    sync(device)
    return torch.cuda.max_memory_allocated(device) - base


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="where to write the JSON results")
    ap.add_argument("--budget", type=float, default=210.0, help="hard time budget, seconds")
    ap.add_argument("--tiny", action="store_true", help="a small config (the CPU test)")
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--batch", type=int, default=None, help="sequences per step (16; tiny 4)")
    ap.add_argument("--rounds", type=int, default=15, help="interleaved rounds at most")
    args = ap.parse_args()
    clock = Clock(args.budget)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = device.type == "cuda"
    sizes, batch_size = (TINY, args.batch or 4) if args.tiny else (SIZES, args.batch or 16)
    dtype = torch.bfloat16 if gpu else torch.float32
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if gpu else platform.processor() or "cpu",
        "torch": torch.__version__,
        "dtype": str(dtype).removeprefix("torch."),
        "config": {**sizes, "batch": batch_size},
        "budget_s": args.budget,
    }
    # 1. the matmul peak
    peak = matmul_peak(device, dtype, 8192 if gpu else 512, reps=10)
    result["matmul_peak_flops"] = peak
    print(f"# {result['device']}, torch {torch.__version__}, {result['dtype']}")
    print(f"matmul peak ({result['dtype']}): {peak / 1e12:.2f} TFLOP/s")

    # 2. qkov's training MFU: attention-only, and the general model
    models = {
        "attn-only": ModelConfig(**sizes),
        "general": ModelConfig(**sizes, d_mlp=4 * sizes["d_model"], **GENERAL),
    }
    g = torch.Generator().manual_seed(0)
    batch = torch.randint(0, sizes["d_vocab"], (batch_size, sizes["n_ctx"] + 1), generator=g)
    batch = batch.to(device)
    tokens = batch_size * sizes["n_ctx"]
    result["qkov"] = {}
    for name, cfg in models.items():
        model = Transformer(cfg).to(device)
        times = timed_rounds(
            {"qkov": train_step(model, batch, device, fused=True)}, device, clock, args.rounds
        )
        result["qkov"][name] = summary(
            times["qkov"], train_step_flops(cfg, batch_size), tokens, peak
        )
        result["qkov"][name]["step_flops"] = train_step_flops(cfg, batch_size)
        del model
    # 3. qkov against TransformerLens on the same weights
    tl = import_transformer_lens() if clock.left() > 30 else None
    result["vs_transformer_lens"] = None
    if tl is not None:
        from qkov.interop import to_hooked_transformer

        cfg = models["attn-only"]
        model = Transformer(cfg)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tl_model = to_hooked_transformer(model).to(device).train()
        model = model.to(device)
        steps = {
            "qkov": train_step(model, batch, device, fused=True),
            "TL": train_step(tl_model, batch, device, fused=False),
        }
        times = timed_rounds(steps, device, clock, args.rounds)
        flops = train_step_flops(cfg, batch_size)
        result["vs_transformer_lens"] = {
            n: summary(t, flops, tokens, peak) for n, t in times.items()
        }
        ratio = [b / a for a, b in zip(times["qkov"], times["TL"], strict=True)]
        med, lo, hi = median_interval(ratio)
        result["vs_transformer_lens"]["qkov_over_TL"] = [round(v, 3) for v in (med, lo, hi)]
        del model, tl_model, steps
    # 4. peak memory: fused loss against F.cross_entropy on the logits
    result["memory_mib"] = None
    if gpu and clock.left() > 15:
        cfg = models["attn-only"]
        model = Transformer(cfg).to(device)
        mem = {
            kind: peak_memory(train_step(model, batch, device, fused=kind == "fused"), device)
            for kind in ("fused", "unfused")
        }
        result["memory_mib"] = {k: round(v / 2**20, 1) for k, v in mem.items()}
        del model
    result["seconds_used"] = round(args.budget - clock.left(), 1)
    print_table(result)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


def print_table(result: dict[str, Any]) -> None:
    c = result["config"]
    print(
        f"\nconfig: d_model {c['d_model']}, {c['n_heads']} heads, vocab {c['d_vocab']}, "
        f"ctx {c['n_ctx']}, {c['n_layers']} layers, batch {c['batch']}"
    )
    print("| run | step ms [95% interval] | tok/s | MFU | rounds |")
    print("| --- | ---: | ---: | ---: | ---: |")
    rows = [(f"qkov {n}", r) for n, r in result["qkov"].items()]
    vs = result["vs_transformer_lens"]
    if vs:
        rows += [(f"{n} (vs TL run, attn-only)", vs[n]) for n in ("qkov", "TL")]
    for name, r in rows:
        lo, hi = r["step_ms_interval"]
        print(
            f"| {name} | {r['step_ms']:.1f} [{lo:.1f}-{hi:.1f}] | {r['tokens_per_s']:,.0f} | "
            f"{r['mfu']:.0%} | {r['rounds']} |"
        )
    if vs:
        med, lo, hi = vs["qkov_over_TL"]
        print(f"qkov / TL training speed: {med:.2f}x [{lo:.2f}-{hi:.2f}]")
    else:
        print("qkov / TL: not measured")
    mem = result["memory_mib"]
    if mem:
        print(
            f"peak memory of a step: fused loss {mem['fused']:,.0f} MiB, F.cross_entropy "
            f"{mem['unfused']:,.0f} MiB ({mem['unfused'] / mem['fused']:.1f}x)"
        )
    else:
        print("peak memory: not measured (needs CUDA)")
    print(f"seconds used: {result['seconds_used']} of {result['budget_s']}")


if __name__ == "__main__":
    main()
