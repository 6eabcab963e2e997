"""Training loop: AdamW, warmup + cosine decay, gradient clipping, atomic checkpoints, resume.

A run directory holds:
    config.json              ModelConfig
    train_config.json        TrainConfig
    model.safetensors        the paper's matrices (what `qkov.load` reads)
    train_state.safetensors  weights + AdamW moments + step (what `--resume` reads)
    tokenizer.json           the corpus tokenizer (text corpora)
    token_counts.json        how often each token id occurs in the train split (text corpora)
    heldout.json             the held-out documents: names and text hashes (text corpora)
    metrics.jsonl            one JSON record per logged step
    versions.json            Python, torch and qkov versions of the run

Batches depend only on (seed, step), so stopping at step k and resuming reproduces the
uninterrupted run exactly on CPU.

`train` is the loop; the machinery around it has a name each: `prepare_run`
(qkov.train_setup) makes every check before anything is built or written (resume,
--init-from, memory, data), `RunLock` keeps a second process out of the directory,
`_write_run_files` writes the run's record, `_save_checkpoint` the weights and optimizer
state, `_StepLog` the metrics and progress, and `StopRequest` (qkov.interrupt) turns
SIGINT/SIGTERM into a final checkpoint."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from qkov import __version__, distributed
from qkov.allocator import keep_freed_memory
from qkov.attention import implementation
from qkov.checkpoint import TOKEN_COUNTS, write_token_counts
from qkov.config import ModelConfig, TrainConfig
from qkov.data.corpus import HELDOUT
from qkov.errors import QkovError
from qkov.flops import matmul_peak, mfu, train_step_flops
from qkov.interrupt import StopRequest, TrainingInterrupted
from qkov.io import atomic_save_safetensors, atomic_write_text
from qkov.loss import implementation as loss_implementation
from qkov.metrics import METRICS, read_records
from qkov.model import AttnOnlyTransformer
from qkov.runlock import RunLock
from qkov.snapshots import save_snapshot, snapshot_steps
from qkov.train_setup import Run, prepare_run, resume_config
from qkov.train_state import STATE, remove_stale_temp_files, restore_state, state_tensors

__all__ = ["TrainConfig", "TrainingInterrupted", "evaluate", "resume_config", "train"]


@torch.no_grad()
def evaluate(model: AttnOnlyTransformer, batches: list[torch.Tensor]) -> float:
    """Mean loss over fixed held-out batches [batch, n_ctx + 1]."""
    model.eval()
    total = 0.0
    for b in batches:
        b = b.to(model.device)
        total += model(b[:, :-1], b[:, 1:]).item()
    model.train()
    return total / len(batches)


def _make_optimizer(model: AttnOnlyTransformer, tc: TrainConfig) -> torch.optim.AdamW:
    """AdamW (PyTorch's fused kernel on a CPU or CUDA); weight decay on the matrices (W_*,
    W_E and W_pos included, as always), none on biases (b_*) and norm weights (ln*_w,
    ln*_b), which decay would pull away from 0 and 1."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in trainable if n.startswith("W_")]
    groups = [{"params": decay, "weight_decay": tc.weight_decay}]
    rest = [p for n, p in trainable if not n.startswith("W_")]
    if rest:  # an attention-only model has none: its optimizer is today's
        groups.append({"params": rest, "weight_decay": 0.0})
    fused = model.device.type in ("cpu", "cuda")  # one kernel per parameter, not a dozen ops
    return torch.optim.AdamW(
        groups, lr=tc.lr, betas=(0.9, 0.99), weight_decay=tc.weight_decay, fused=fused
    )


def versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "qkov": __version__,
        "platform": platform.platform(),
    }


def train(
    model_cfg: ModelConfig | None,
    tc: TrainConfig,
    out_dir: str | Path,
    resume: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
    data: Any = None,
) -> AttnOnlyTransformer:
    """Train a model into `out_dir`; resume from its train state if asked.

    model_cfg: None on resume (read from out_dir/config.json). d_vocab is taken from the
    corpus tokenizer. On resume only tc.steps (if more than the run's) and tc.device are
    used: see `resume_config`. stop_after: stop (with a checkpoint) after this step, keeping
    the schedule of `tc.steps`, so that a later resume goes on as if never stopped
    (`qkov train --resume --steps N` with N fewer than the run's); a step the run has
    already reached is refused."""
    out = Path(out_dir)
    _given_peak()  # a bad $QKOV_MATMUL_PEAK is refused before anything is written
    # Signals are caught from the start: a stop asked for during set-up takes effect at the
    # first step boundary (or the watchdog exits the process: see qkov.interrupt).
    with RunLock(out) as lock, StopRequest(str(out)) as stop:
        run = prepare_run(model_cfg, tc, out, resume, data, lock)  # checks; writes nothing
        cfg, tc, data, dd = run.cfg, run.tc, run.data, run.dd
        model, opt, step = _build_model(run)
        if stop_after is not None and stop_after <= step:  # before a file is written
            raise QkovError(
                f"{out} is already at step {step} (of its {tc.steps}): stopping at step "
                f"{stop_after} leaves nothing to do; give --steps above {step}"
            )
        if dd.main:  # only rank 0 writes files
            _write_run_files(run, model, step, lock)
        last = min(tc.steps, stop_after) if stop_after is not None else tc.steps
        keep = set(snapshot_steps(tc.steps, tc.keep_checkpoints)) if dd.main else set()
        use_bf16 = torch.device(dd.device).type == "cuda"
        if not use_bf16:  # a CPU: each step's buffers stay in the process (qkov.allocator)
            keep_freed_memory()
        fwd = distributed.wrap(model, dd)  # DDP under torchrun: averages gradients over ranks
        model.train()
        stop.boundary()  # the loop starts
        with _StepLog(run, model, step, last, progress) as log:
            while step < last:
                batch = data.train_batch(step, tc.batch_size, cfg.n_ctx, tc.seed)
                batch = distributed.share(batch, dd).to(dd.device)  # this rank's rows
                lr = tc.lr_at(step)
                for g in opt.param_groups:
                    g["lr"] = lr
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
                    # fused unembed + loss (the smoothed one with --label-smoothing)
                    loss = fwd(batch[:, :-1], batch[:, 1:], tc.label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                # the train loss logged is the plain cross-entropy; with --label-smoothing the
                # smoothed loss minimised is logged beside it
                smoothed = loss.item() if tc.label_smoothing else None
                plain = model.last_cross_entropy if tc.label_smoothing else loss
                # Mean over ranks (same on all), and whether any rank was asked to stop.
                loss_value, stopping = distributed.mean_and_any(plain.item(), stop.requested, dd)
                _check_finite(loss_value, step, out)
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
                opt.step()
                step += 1
                log.step(step, loss_value, lr, smoothed)
                if stopping:
                    stop.acknowledge()  # the final checkpoint is under way
                if stopping or step % tc.ckpt_interval == 0 or step == last:
                    _save_checkpoint(run, model, opt, step)
                if step in keep:
                    save_snapshot(out, model, step)
                if stopping:  # another rank may have been the one signalled: SIGTERM then
                    raise TrainingInterrupted(stop.signum or signal.SIGTERM)
                stop.boundary()
    distributed.teardown(dd)
    return model


def _build_model(run: Run) -> tuple[AttnOnlyTransformer, torch.optim.AdamW, int]:
    """The model (initialised, --init-from, or resumed), its optimizer, and the step."""
    torch.manual_seed(run.tc.seed)
    model = AttnOnlyTransformer(run.cfg).to(run.dd.device)
    if run.start is not None:
        model.load_weights(run.start.weights(), source=run.tc.init_from)
    model.tokenizer = run.data.tokenizer
    opt = _make_optimizer(model, run.tc)
    step = restore_state(model, opt, run.out / STATE) if run.resume else 0
    return model, opt, step


def _write_run_files(run: Run, model: AttnOnlyTransformer, step: int, lock: RunLock) -> None:
    """Lock the directory (creating it), then write the run's record: configs, versions,
    tokenizer, token counts, and metrics.jsonl cut back to `step` (a resume drops what the
    lost steps logged)."""
    out = run.out
    lock.acquire(create=True)
    if not run.resume and (out / STATE).is_file():  # another run finished here meanwhile
        raise QkovError(
            f"{out} already holds a training run: pass --resume to continue it, "
            "or choose another --out"
        )
    remove_stale_temp_files(out)  # temp files of writes a kill interrupted
    run.cfg.save(out / "config.json")
    atomic_write_text(out / "train_config.json", json.dumps(dataclasses.asdict(run.tc), indent=2))
    record = versions() | {
        "attention": implementation(run.cfg.d_head, run.dd.device),
        "loss": loss_implementation(run.cfg.d_model, run.cfg.d_vocab, run.cfg.bias, run.dd.device),
    }
    atomic_write_text(out / "versions.json", json.dumps(record, indent=2))
    if run.data.tokenizer is not None:
        atomic_write_text(out / "tokenizer.json", run.data.tokenizer.to_str())
    if hasattr(run.data, "token_counts"):  # text corpora; synthetic tasks have no fixed stream
        counts = run.data.token_counts()
        write_token_counts(out / TOKEN_COUNTS, counts.tolist(), run.tc.corpus)
        model.token_counts = torch.from_numpy(counts)
    heldout = getattr(run.data, "heldout", None)
    if heldout is not None and not (out / HELDOUT).is_file():  # a resume keeps the first
        atomic_write_text(out / HELDOUT, json.dumps(heldout, indent=1))
    kept = read_records(out / METRICS, upto_step=step)
    atomic_write_text(out / METRICS, "".join(json.dumps(r) + "\n" for r in kept))


def _check_finite(loss_value: float, step: int, out: Path) -> None:
    if not math.isfinite(loss_value):
        raise QkovError(_diverged(f"loss became {loss_value} at step {step}", out))


def _diverged(what: str, out: Path) -> str:
    """The message of a run whose loss stopped being finite: what is kept, what to do.
    --resume would repeat the same steps (it takes the run's --lr and --grad-clip)."""
    if not (out / STATE).is_file():
        return (
            f"{what}: training stopped before its first checkpoint; train again with a lower "
            "--lr or --grad-clip"
        )
    return (
        f"{what}: training stopped; the last good checkpoint in {out} is kept; go on from "
        f"its weights with a lower --lr or --grad-clip: --init-from {out} --out NEW_DIR"
    )


def _save_checkpoint(run: Run, model: AttnOnlyTransformer, opt: torch.optim.AdamW, at: int) -> None:
    """model.safetensors, then train_state.safetensors, each written atomically.

    Only weights with a finite loss are written, so a divergence never replaces the last
    good checkpoint (the train loss of step `at` is only seen at the next step). Every rank
    checks (same weights, same batch), so all ranks stop together."""
    held_out = evaluate(model, run.val[:1])
    if not math.isfinite(held_out):
        raise QkovError(_diverged(f"loss became {held_out} at step {at} (held-out batch)", run.out))
    if not run.dd.main:
        return
    # model.safetensors first: a directory that --resume accepts is always loadable.
    try:
        atomic_save_safetensors(
            run.out / "model.safetensors",
            model.weights(),
            metadata={"format": "qkov", "step": str(at)},
        )
        atomic_save_safetensors(run.out / STATE, state_tensors(model, opt, at))
    except OSError as e:  # the atomic writes left the previous files in place
        raise QkovError(
            f"cannot write the step {at} checkpoint to {run.out} ({e.strerror or e}): is the "
            "disk full? free space, then --resume from the last complete checkpoint"
        ) from None


def _given_peak() -> float | None:
    """$QKOV_MATMUL_PEAK (FLOP/s), where a launcher measured the matmul rate once before
    starting several runs on one device: each run's own measurement would overlap the
    others' steps, read low, and so overstate MFU. None: unset, each run measures."""
    given = os.environ.get("QKOV_MATMUL_PEAK")
    if not given:
        return None
    try:
        peak = float(given)
    except ValueError:
        peak = math.nan
    if not math.isfinite(peak) or peak <= 0:
        raise QkovError(
            f"QKOV_MATMUL_PEAK={given!r} is not a positive FLOP/s rate: unset it to measure"
        )
    return peak


class _StepLog:
    """After each step: a metrics.jsonl record every eval (or probe) interval, on rank 0;
    progress on stderr: a tqdm bar on a terminal, else (a redirected run) a line where it
    starts and one per eval interval."""

    def __init__(
        self, run: Run, model: AttnOnlyTransformer, step: int, last: int, progress: bool
    ) -> None:
        self.run, self.model, self.last = run, model, last
        self.probe = _probe_fn() if run.tc.probe_interval else None
        self.tokens_per_step = run.tc.batch_size * run.cfg.n_ctx
        shown = progress and run.dd.main
        self.lines = shown and not sys.stderr.isatty()
        self.bar = tqdm(
            total=last,
            initial=step,
            disable=not shown or self.lines,
            unit="step",
            desc=f"train {run.out.name}",
            dynamic_ncols=True,
        )
        self.file = open(run.out / METRICS if run.dd.main else os.devnull, "a", encoding="utf-8")
        # MFU: the step's FLOPs from the config over this device's measured matmul rate
        # (bf16 on a GPU, as autocast runs it; a small fp32 product on a CPU: ~40 ms).
        dev = torch.device(run.dd.device)
        gpu = dev.type == "cuda"
        self.step_flops = train_step_flops(run.cfg, run.tc.batch_size)
        dtype, size = (torch.bfloat16, 8192) if gpu else (torch.float32, 1024)
        given = _given_peak()
        # Measured here, the peak is the fastest product seen so far: one more at each
        # record (~15 ms on a CPU), where the steps are paused, so a first measurement that
        # shared the device with another job (and read low, overstating MFU) is outgrown.
        self.measure = None if given else (lambda reps: matmul_peak(dev, dtype, size, reps=reps))
        peak = given or self.measure(3)
        self.peak = peak if run.dd.main else 0.0
        self.t_last, self.tokens_since = time.perf_counter(), 0
        if self.lines:  # a redirected run says at once where it starts and when it reports
            print(
                f"train {run.out.name}: {'resumed at' if step else 'from'} step {step:,} to "
                f"{last:,}, {self.tokens_per_step:,} tokens a step; a line every "
                f"{run.tc.eval_interval:,} steps",
                file=sys.stderr,
                flush=True,
            )

    def __enter__(self) -> _StepLog:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.close()
        self.file.close()

    def step(self, step: int, loss_value: float, lr: float, smoothed: float | None) -> None:
        """Log step `step`: its train loss (the cross-entropy) and, with --label-smoothing,
        the smoothed loss it minimised (`train_smoothed_loss`, rank 0's)."""
        tc = self.run.tc
        self.bar.update(1)
        self.tokens_since += self.tokens_per_step
        logged = step % tc.eval_interval == 0 or step == self.last
        probed = self.probe is not None and step % tc.probe_interval == 0
        if not (self.run.dd.main and (logged or probed)):
            return
        seconds = time.perf_counter() - self.t_last
        steps_since = self.tokens_since / self.tokens_per_step
        rec: dict[str, Any] = {
            "step": step,
            "tokens": step * self.tokens_per_step,
            "train_loss": round(loss_value, 5),
            **({} if smoothed is None else {"train_smoothed_loss": round(smoothed, 5)}),
            "lr": lr,
            "tokens_per_s": round(self.tokens_since / seconds, 1),
        }
        if self.peak:  # the share of the matmul peak the steps reached (qkov.flops)
            if self.measure is not None:
                self.peak = max(self.peak, self.measure(1))
            rec["mfu"] = round(mfu(self.step_flops * steps_since, seconds, self.peak), 4)
        if logged:
            rec["val_loss"] = round(evaluate(self.model, self.run.val), 5)
        if probed:
            self.model.eval()
            # A score with no head to measure (0 layers) is NaN or None: leave it out. Head
            # names (probe_induction_head, probe_partner_head, ...) are strings.
            for k, v in self.probe(self.model).items():
                if isinstance(v, (str, int)):  # a head's name, a block length
                    rec[k] = v
                elif v is not None and math.isfinite(float(v)):
                    rec[k] = round(float(v), 5)
            self.model.train()
        self.file.write(json.dumps(rec) + "\n")
        self.file.flush()
        self.bar.set_postfix(
            loss=f"{loss_value:.3f}",
            val=rec.get("val_loss", "-"),
            tok_s=f"{rec['tokens_per_s']:.0f}",
            mfu=f"{rec.get('mfu', 0):.0%}",
        )
        if self.lines and logged:
            print(
                f"train {self.run.out.name}: step {step}/{self.last}, {rec['tokens']:,} tokens, "
                f"train loss {loss_value:.4f}, val loss {rec['val_loss']:.4f}, "
                f"{rec['tokens_per_s']:,.0f} tokens/s, MFU {rec.get('mfu', 0):.0%}",
                file=sys.stderr,
                flush=True,
            )
        self.t_last, self.tokens_since = time.perf_counter(), 0


def _probe_fn():
    from qkov.training_probe import training_probe

    return training_probe
