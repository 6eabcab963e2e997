"""Train the shipped-model candidates side by side on one GPU, evaluate them, pack the best.

Run on a GPU machine from the repository root (see src/qkov/demo_models/TRAINING.md):

    python3 scripts/gpu_train.py --minutes 6 --stdlib-tar .gpu/stdlib311.tar.gz \
        --cache .gpu/cache --out $OUT

Every candidate is a plain `qkov train` command (printed to the log and written to
summary.json), started at once on the same GPU and stopped by SIGTERM after --minutes (a
stopped run writes its checkpoint first: its step is in summary.json, so `--steps STEP`
with the same flags reproduces it, the learning rate being constant after warmup).
The default corpus is Python 3.11's standard library: --stdlib-tar unpacks those files at
the path they had where the shipped tokenizer was made, so document names, the held-out
split and the token cache (--cache) are the same as on the CPU machine.

--only picks the runs: by default round 3's (ROUND3_RUNS: label smoothing, prepared for the
repeated-half target); round 1's eleven, which chose the sweep's shipped models, and round
2's, since run on the CPU, keep their names in RUNS. The token cache must hold every
vocabulary the runs use (a missing one is made on the GPU machine first, eating into its
minutes).
scripts/gpu_prepare.py makes the library's tar and the token caches (xz-packed: 9 MB for
the 2,048- and 8,192-token streams, 38 MB raw), and scripts/gpu_session.sh, the one device
call, unpacks them and runs this script after benchmarks/gpu.py. Test: --smoke --corpus DIR
(tests/test_gpu_train.py).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

STDLIB = "/root/.pyenv/versions/3.11.7/lib/python3.11"
COMMON = (
    "--corpus stdlib --vocab-size 2048 --positional shortformer --pos-init-std 1.0 "
    "--warmup 500 --min-lr-ratio 1.0 --eval-interval 500 --ckpt-interval 1000 "
    "--probe-interval 500 --seed 0 --device cuda"
)
# name: (what the run varies, flags). Each run's --steps is far more than fits: SIGTERM ends it.
RUNS: dict[str, tuple[str, str]] = {
    "a2_d512_h8_c512": (
        "2L base",
        "--n-layers 2 --d-model 512 --n-heads 8 --n-ctx 512 --batch-size 64 "
        "--lr 1e-3 --normalization rms",
    ),
    "a2_d256_h8_c256": (
        "2L narrower, shorter ctx",
        "--n-layers 2 --d-model 256 --n-heads 8 --n-ctx 256 "
        "--batch-size 128 --lr 2e-3 --normalization rms",
    ),
    "a2_d512_h8_c256": (
        "2L shorter ctx",
        "--n-layers 2 --d-model 512 --n-heads 8 --n-ctx 256 --batch-size 128 "
        "--lr 1e-3 --normalization rms",
    ),
    "a2_d512_h16_c512": (
        "2L more heads (d_head 32)",
        "--n-layers 2 --d-model 512 --n-heads 16 --n-ctx 512 "
        "--batch-size 64 --lr 1e-3 --normalization rms",
    ),
    "a2_d768_h12_c512": (
        "2L ARENA width",
        "--n-layers 2 --d-model 768 --n-heads 12 --n-ctx 512 --batch-size 64 "
        "--lr 6e-4 --normalization rms",
    ),
    "a2_d512_h8_c512_nonorm": (
        "2L no norm",
        "--n-layers 2 --d-model 512 --n-heads 8 --n-ctx 512 --batch-size 64 "
        "--lr 1e-3 --normalization none",
    ),
    "a2_d512_h8_c512_lr3e3": (
        "2L higher lr",
        "--n-layers 2 --d-model 512 --n-heads 8 --n-ctx 512 --batch-size 64 "
        "--lr 3e-3 --normalization rms",
    ),
    "a2_d512_h8_c512_pos002": (
        "2L small positional init",
        "--n-layers 2 --d-model 512 --n-heads 8 --n-ctx 512 "
        "--batch-size 64 --lr 1e-3 --normalization rms --pos-init-std 0.02",
    ),
    "a1_d512_h8_c512": (
        "1L",
        "--n-layers 1 --d-model 512 --n-heads 8 --n-ctx 512 --batch-size 64 --lr 1e-3 "
        "--normalization rms",
    ),
    "a0_d512_c512": (
        "0L",
        "--n-layers 0 --d-model 512 --n-heads 8 --n-ctx 512 --batch-size 64 --lr 1e-3 "
        "--normalization rms",
    ),
    "m2_d512_h8_c512": (
        "2L with MLPs",
        "--n-layers 2 --d-model 512 --n-heads 8 --n-ctx 512 --batch-size 64 "
        "--lr 1e-3 --normalization rms --d-mlp 2048 --act-fn gelu",
    ),
}
# Round 2 (prepared 2026-11-27, not yet run: no GPU was lent to that session): recipes aimed
# at the one target round 1 missed, the repeated-half loss (TRAINING.md, "Why the repeated
# half costs 5.6 nats"). Each starts from round 1's best (a2_d512_h8_c512_lr3e3) and changes
# one thing. Run them with `--only` and the names below.
ROUND2 = "--n-layers 2 --d-model 512 --n-ctx 512 --batch-size 64 --normalization rms"
ROUND2_RUNS = {
    "r2_lr6e3": ("lr 6e-3", f"{ROUND2} --n-heads 8 --lr 6e-3"),
    "r2_h4": ("4 heads of 128", f"{ROUND2} --n-heads 4 --lr 3e-3"),
    "r2_wd01": ("weight decay 0.1", f"{ROUND2} --n-heads 8 --lr 3e-3 --weight-decay 0.1"),
    "r2_v8192": ("vocabulary 8192", f"{ROUND2} --n-heads 8 --lr 3e-3 --vocab-size 8192"),
    "r2_c1024": (
        "context 1024",
        "--n-layers 2 --d-model 512 --n-ctx 1024 --batch-size 32 --normalization rms "
        "--n-heads 8 --lr 3e-3",
    ),
    "r2_decay": (
        "cosine decay to 0.1 over 3000 steps",
        f"{ROUND2} --n-heads 8 --lr 3e-3 --min-lr-ratio 0.1 --steps 3000",
    ),
    # not one change: the largest lever of round 1 (the learning rate) with weight decay,
    # which may hold back the prior that outranks the copied token; a shot at the target
    "r2_lr6e3_wd01": (
        "lr 6e-3 and weight decay 0.1",
        f"{ROUND2} --n-heads 8 --lr 6e-3 --weight-decay 0.1",
    ),
    # not aimed at the target: the MLP model on attn2's recipe, as the issue asks (round 1's
    # m2 at lr 1e-3 had induction heads of 0.44); shipped as mlp2 since 2026-12-08 from a
    # CPU run to 36M tokens (TRAINING.md), so a GPU run here gives it ~3x the tokens
    "r2_mlp2": (
        "2L with MLPs, attn2's recipe (lr 3e-3)",
        f"{ROUND2} --n-heads 8 --lr 3e-3 --d-mlp 2048 --act-fn gelu",
    ),
}
# Round 2 logs finer than round 1 (every 100 and 50 steps, 3.3M and 1.6M tokens, not 16M):
# round 1's attn2 had three records, all after its induction heads formed, so the report's
# training curves could not show the circuit forming (issue 18). Later flags win.
ROUND2_LOGGING = "--eval-interval 100 --probe-interval 50"
ROUND2_RUNS = {n: (what, f"{flags} {ROUND2_LOGGING}") for n, (what, flags) in ROUND2_RUNS.items()}
RUNS |= ROUND2_RUNS
# Round 3 (prepared 2026-12-08): round 2's recipes all ran on the CPU since (TRAINING.md,
# "Round 2 on this CPU"), none reached the target; label smoothing (--label-smoothing ε,
# added 2026-12-08) caps how sure the prior is, which is what outranks the copied token;
# at ε = 0.1 the repeated half cost 51% of uniform at 32M tokens on the CPU, where attn2's
# recipe cost 63-67% (TRAINING.md, "Round 3 on this CPU: label smoothing"). Each is attn2's
# recipe with one ε; on a GPU they see ~2x the CPU run's tokens.
ROUND3_RUNS = {
    f"r3_ls{tag}": (
        f"label smoothing {eps}",
        f"{ROUND2} --n-heads 8 --lr 3e-3 --label-smoothing {eps} {ROUND2_LOGGING}",
    )
    for tag, eps in (("005", 0.05), ("01", 0.1), ("02", 0.2), ("03", 0.3), ("05", 0.5))
}
RUNS |= ROUND3_RUNS


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def setup(stdlib_tar: Path | None, cache: Path) -> None:
    if stdlib_tar is not None:
        if not Path(STDLIB).is_dir():
            Path(STDLIB).parent.mkdir(parents=True, exist_ok=True)
            with tarfile.open(stdlib_tar) as tar:
                tar.extractall(Path(STDLIB).parent, filter="data")
        os.environ["QKOV_STDLIB"] = STDLIB
    os.environ["QKOV_STOP_GRACE_S"] = "50"  # SIGTERM mid-evaluation still ends in a checkpoint
    os.environ["QKOV_CACHE"] = str(cache.resolve())
    os.environ["OMP_NUM_THREADS"] = "1"  # many runs share the CPU cores
    os.environ["PYTHONPATH"] = str(Path("src").resolve())
    sys.path.insert(0, str(Path("src").resolve()))


def train_all(
    runs_dir: Path,
    minutes: float,
    only: list[str],
    smoke: bool,
    init_from: str | None = None,
    corpus: str = "stdlib",
) -> dict[str, dict]:
    procs = {}
    if not smoke:  # measured once, alone: each run's own would overlap the others' steps
        import torch

        from qkov.flops import matmul_peak

        os.environ["QKOV_MATMUL_PEAK"] = str(matmul_peak("cuda", torch.bfloat16, 8192, reps=10))
        log(f"bf16 matmul peak {float(os.environ['QKOV_MATMUL_PEAK']) / 1e12:.0f} TFLOP/s")
    for name, (what, flags) in RUNS.items():
        if only and name not in only:
            continue
        # flags come last, so a run's own --steps or --vocab-size wins over the defaults
        cmd = f"qkov train {COMMON} --steps 100000 {flags} --out runs/{name}"
        cmd = cmd.replace("--corpus stdlib", f"--corpus {corpus}")
        if init_from:  # a second stage: the weights of a first one, a fresh optimizer
            cmd += f" --init-from {init_from} --warmup 200"
        if smoke:  # a CPU check of this script: tiny widths, same structure
            cmd = (
                cmd.replace("--d-model 512", "--d-model 32")
                .replace("--d-model 768", "--d-model 48")
                .replace("--d-model 256", "--d-model 32")
                .replace("--n-ctx 512", "--n-ctx 128")
                .replace("--n-ctx 256", "--n-ctx 128")
                .replace("--n-ctx 1024", "--n-ctx 128")
                .replace("--d-mlp 2048", "--d-mlp 64")
                .replace("--device cuda", "--device cpu")
                # a set number of steps, so what a smoke run logs does not hang on how busy
                # the machine is; --minutes only bounds it
                + " --batch-size 4 --probe-interval 5 --steps 20"
            )
        argv = [sys.executable, "-m", "qkov", *cmd.split()[1:]]
        argv[argv.index("--out") + 1] = str(runs_dir / name)
        logf = open(runs_dir / f"{name}.log", "w")
        procs[name] = (subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT), cmd, what)
        log(f"started {name}: {cmd}")
    deadline = time.time() + minutes * 60
    while time.time() < deadline and any(p.poll() is None for p, _, _ in procs.values()):
        time.sleep(5)
    for p, _, _ in procs.values():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for name, (p, _, _) in procs.items():
        try:
            p.wait(timeout=90)
        except subprocess.TimeoutExpired:
            p.kill()
            log(f"{name} did not stop in 90 s: killed")
    return {
        name: {"command": cmd, "varies": what, "returncode": p.returncode}
        for name, (p, cmd, what) in procs.items()
    }


def evaluate(run: Path) -> dict:
    import torch

    from qkov.checkpoint import load
    from qkov.composition import composition_scores
    from qkov.eigenvalues import ov_statistics_all
    from qkov.heads import head_scores
    from qkov.metrics import read_records
    from qkov.repetition import pool_count_bins, repetition_test

    model = load(run, device="cuda" if torch.cuda.is_available() else "cpu").eval()
    recs = read_records(run / "metrics.jsonl")
    last_val = [r for r in recs if "val_loss" in r]
    out: dict = {
        "config": model.cfg.to_dict(),
        "n_params": model.cfg.n_params,
        "val_loss": last_val[-1]["val_loss"] if last_val else None,
        "tokens": last_val[-1]["tokens"] if last_val else None,
        "last_record": recs[-1] if recs else None,
    }
    from safetensors import safe_open

    with safe_open(str(run / "model.safetensors"), "pt") as f:
        out["step"] = int(f.metadata().get("step", 0))
    out["tokens"] = (
        out["step"]
        * json.loads((run / "train_config.json").read_text())["batch_size"]
        * model.cfg.n_ctx
    )
    # the repetition test (seed 0) as the training probe logged it along the run: whether
    # the repeated half cost less at some earlier step than at the last
    out["repetition_along_training"] = [
        {k: r.get(k) for k in ALONG}
        for r in recs
        if isinstance(r.get("repetition_repeated_fraction"), (int, float))
    ]
    if model.cfg.n_layers == 0:
        return out
    reps = [repetition_test(model, seed=s) for s in range(5)]
    ind = torch.stack([r.induction_scores for r in reps]).mean(0)
    out["repetition"] = {
        "induction_scores_mean5": ind.tolist(),
        "first_half_loss": sum(r.first_half_loss for r in reps) / 5,
        "repeated_half_loss": sum(r.repeated_half_loss for r in reps) / 5,
        "uniform_loss": reps[0].uniform_loss,
        "rival_logit": sum(r.repeated_token_logit.rival_logit for r in reps) / 5,
        "repeated_token_logit": sum(r.repeated_token_logit.logit for r in reps) / 5,
        "loss_without": {  # the repeated half's loss without one layer's direct write
            name: sum(r.repeated_token_logit.loss_without[name] for r in reps) / 5
            for name in reps[0].repeated_token_logit.loss_without
        },
        "by_training_count": None
        if reps[0].by_training_count is None
        else [
            {**vars(b), "label": b.label, "lift": b.lift}
            for b in pool_count_bins([r.by_training_count for r in reps])
        ],
        "seed0": reps[0].to_dict(),
    }
    probes = torch.stack([head_scores(model, seed=s, copying=False).induction for s in range(8)])
    out["probe_induction_min8"] = probes.min(0).values.tolist()
    out["probe_induction_mean8"] = probes.mean(0).tolist()
    prev = head_scores(model, seed=0, copying=False).previous_token
    out["previous_token"] = prev.tolist()
    out["ov_eigenvalue_score"] = [s.eigenvalue_score for s in ov_statistics_all(model)]
    if model.cfg.n_layers >= 2:
        comp = composition_scores(model)
        out["k_composition"] = comp.k.tolist()
        out["k_baseline"] = [comp.baseline_mean["k"], comp.baseline_std["k"]]
    return out


ALONG = (
    "step",
    "tokens",
    "repetition_first_half_loss",
    "repetition_repeated_half_loss",
    "repetition_repeated_fraction",
    "repetition_induction_score",
    "repetition_second_score",
)


def lowest_along(ev: dict) -> str:
    """'lowest repeated-half fraction along training 0.52 at step 700', or '' without a
    logged repetition test."""
    along = ev.get("repetition_along_training") or []
    if not along:
        return ""
    best = min(along, key=lambda r: r["repetition_repeated_fraction"])
    return (
        f", lowest repeated-half fraction along training "
        f"{best['repetition_repeated_fraction']:.2f} at step {best['step']}"
    )


def pack(runs_dir: Path, names: list[str], out: Path) -> list[str]:
    """The runs without optimizer state or snapshots, weights in fp16 (halving what comes
    back; the loader upcasts to fp32), in one tar split into parts of at most 15 MB."""
    from ship_models import float16_weights  # scripts/ is on sys.path: this script's folder

    tar_path = runs_dir / "models.tar"
    with tarfile.open(tar_path, "w") as tar:
        for name in names:
            for p in sorted((runs_dir / name).iterdir()):
                if not p.is_file() or p.name == "train_state.safetensors":
                    continue
                small = runs_dir / f"{name}.fp16.safetensors"
                if p.name == "model.safetensors" and float16_weights(p, small):
                    tar.add(small, arcname=f"{name}/model.safetensors")
                    continue
                tar.add(p, arcname=f"{name}/{p.name}")
    parts, part = [], 15 * 2**20
    with open(tar_path, "rb") as f:
        i = 0
        while chunk := f.read(part):
            (out / f"models.tar.{i}").write_bytes(chunk)
            parts.append(f"models.tar.{i}")
            i += 1
    return parts


def score2(ev: dict) -> float:
    """Second-best induction score on the repetition test: the target wants two heads."""
    rep = ev.get("repetition")
    if not rep:
        return -1.0
    flat = sorted((s for row in rep["induction_scores_mean5"] for s in row), reverse=True)
    return flat[1] if len(flat) > 1 else -1.0


def repeated_fraction(ev: dict) -> float:
    """Repeated-half loss over ln(d_vocab) on the repetition test (inf without one): issue
    18's unmet target wants it <= 0.4."""
    rep = ev.get("repetition")
    return rep["repeated_half_loss"] / rep["uniform_loss"] if rep else math.inf


def choose(evals: dict[str, dict]) -> list[str]:
    """The runs to bring back, most wanted first (packing stops at --budget-mb): the 2-layer
    attention-only run with the lowest repeated-half fraction, the one with the strongest
    second induction head, every 0-layer, 1-layer and MLP run, then the second-lowest
    repeated-half fraction. Chosen by each run's config, not its name (round 2's are r2_*)."""
    cfgs = {n: ev.get("config") or {} for n, ev in evals.items()}
    two = [n for n, c in cfgs.items() if c.get("n_layers") == 2 and not c.get("d_mlp")]
    by_fraction = sorted(two, key=lambda n: repeated_fraction(evals[n]))
    by_heads = sorted(two, key=lambda n: -score2(evals[n]))
    others = [n for n, c in cfgs.items() if c and n not in two]
    chosen = by_fraction[:1] + by_heads[:1] + others + by_fraction[1:2]
    return list(dict.fromkeys(chosen))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=6.0)
    ap.add_argument(
        "--stdlib-tar", type=Path, help="Python 3.11's library (scripts/gpu_prepare.py makes it)"
    )
    ap.add_argument(
        "--corpus", default="stdlib", help="another corpus than the library (tests: a tiny one)"
    )
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument(
        "--runs", type=Path, help="where the runs train (default: a new temporary folder)"
    )
    ap.add_argument(
        "--only", nargs="*", default=list(ROUND3_RUNS), help="runs to train (default: round 3)"
    )
    ap.add_argument("--budget-mb", type=float, default=55.0)
    ap.add_argument("--init-from", help="start the --only runs from these weights (stage 2)")
    ap.add_argument("--smoke", action="store_true", help="tiny models on the CPU: test this script")
    args = ap.parse_args()
    t0 = time.time()
    if args.corpus == "stdlib" and args.stdlib_tar is None:
        ap.error("--stdlib-tar is needed to train on the library (scripts/gpu_prepare.py)")
    setup(args.stdlib_tar if args.corpus == "stdlib" else None, args.cache)
    if args.runs is None:
        args.runs = Path(tempfile.mkdtemp(prefix="qkov-runs-"))
    stale = [n for n in (args.only or RUNS) if (args.runs / n).exists()]
    if stale:  # their old checkpoints would be evaluated and packed as this sweep's
        ap.error(f"--runs {args.runs} already holds {', '.join(stale)}: choose another folder")
    args.runs.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    log(f"torch {torch.__version__}, {device}")
    summary = {
        "device": device,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "minutes": args.minutes,
        "runs": train_all(
            args.runs, args.minutes, args.only, args.smoke, args.init_from, args.corpus
        ),
    }
    log(f"training done in {time.time() - t0:.0f} s")

    # written after each step from here on: a device call cut short (its time limit) still
    # brings back what was evaluated
    def write() -> None:
        (args.out / "summary.json").write_text(json.dumps(summary, indent=1))

    write()
    for name in summary["runs"]:
        try:
            summary["runs"][name]["eval"] = evaluate(args.runs / name)
            ev = summary["runs"][name]["eval"]
            log(
                f"{name}: step {ev['step']}, tokens {ev['tokens']:,}, val {ev['val_loss']}, "
                f"second induction {score2(ev):.3f}, repeated-half fraction "
                f"{repeated_fraction(ev):.2f}{lowest_along(ev)}"
            )
        except Exception as e:  # one broken run must not lose the others
            summary["runs"][name]["eval_error"] = repr(e)
            log(f"{name}: eval failed: {e!r}")
        write()
    with tarfile.open(args.out / "logs.tar.gz", "w:gz") as tar:
        for name in summary["runs"]:
            for f in (args.runs / f"{name}.log", args.runs / name / "metrics.jsonl"):
                if f.exists():
                    tar.add(f, arcname=f"{name}/{f.name}")
    evals = {n: r.get("eval", {}) for n, r in summary["runs"].items()}
    chosen = choose(evals)
    ok = [n for n in chosen if (args.runs / n / "model.safetensors").is_file()]
    mb = {n: (args.runs / n / "model.safetensors").stat().st_size / 2**21 for n in ok}  # fp16
    while ok and sum(mb[n] for n in ok) > args.budget_mb:
        log(f"{ok[-1]}: would pass the {args.budget_mb} MB budget: not packed")
        ok.pop()
    packed = pack(args.runs, ok, args.out)
    used = sum(mb[n] for n in ok)
    summary["packed"] = {"runs": ok, "parts": packed}
    write()
    log(f"packed {packed} ({used:.1f} MB); total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
