"""Training loop: AdamW, warmup + cosine decay, gradient clipping, atomic checkpoints, resume.

A run directory holds:
    config.json              ModelConfig
    train_config.json        TrainConfig
    model.safetensors        the paper's matrices (what `qkov.load` reads)
    train_state.safetensors  weights + AdamW moments + step (what `--resume` reads)
    tokenizer.json           the corpus tokenizer (text corpora)
    metrics.jsonl            one JSON record per logged step
    versions.json            Python, torch and qkov versions of the run

Batches depend only on (seed, step), so stopping at step k and resuming reproduces the
uninterrupted run exactly on CPU."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from qkov import distributed
from qkov.checkpoint import load_safetensors, read_json
from qkov.config import ModelConfig
from qkov.errors import QkovError
from qkov.io import atomic_save_safetensors, atomic_write_text
from qkov.model import WEIGHT_NAMES, AttnOnlyTransformer


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and data settings of a run (CLI flags use the same names)."""

    corpus: str = "stdlib"
    steps: int = 1500
    batch_size: int = 16
    lr: float = 3e-3
    warmup: int = 100
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    eval_interval: int = 100
    eval_batches: int = 8
    ckpt_interval: int = 250
    probe_interval: int = 0  # 0: no head probes during training
    seed: int = 0
    device: str = "cpu"
    init_from: str | None = None  # a model directory whose weights start the run (fine-tuning)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_interval", "eval_batches", "ckpt_interval"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise QkovError(f"--{name.replace('_', '-')} must be a positive integer, got {v!r}")
        for name in ("warmup", "probe_interval", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise QkovError(f"--{name.replace('_', '-')} must be >= 0, got {v!r}")
        if self.seed >= 2**63:  # torch.Generator takes 64-bit seeds
            raise QkovError(f"--seed must be below 2**63, got {self.seed}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise QkovError(f"--lr must be a positive number, got {self.lr}")
        if not self.grad_clip > 0:  # also refuses NaN
            raise QkovError(f"--grad-clip must be positive, got {self.grad_clip}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise QkovError(f"--weight-decay must be a finite number >= 0, got {self.weight_decay}")
        if not 0 <= self.min_lr_ratio <= 1:  # also refuses NaN
            raise QkovError(f"--min-lr-ratio must be in [0, 1], got {self.min_lr_ratio}")

    def lr_at(self, step: int) -> float:
        """Linear warmup to lr, then cosine decay to min_lr_ratio * lr at `steps`."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        frac = min(1.0, (step - self.warmup) / max(1, self.steps - self.warmup))
        cos = 0.5 * (1 + math.cos(math.pi * frac))
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * cos)


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy. logits [batch, pos, d_vocab], targets [batch, pos]."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))


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
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=tc.lr, betas=(0.9, 0.99), weight_decay=tc.weight_decay)


def _trainable_names(model: AttnOnlyTransformer) -> list[str]:
    return [n for n in WEIGHT_NAMES if getattr(model, n).requires_grad]


def state_tensors(model: AttnOnlyTransformer, opt: torch.optim.AdamW, step: int) -> dict:
    """Everything needed to resume: weights, AdamW moments and step counts, the step."""
    out = {f"model.{k}": v for k, v in model.weights().items()}
    for name in _trainable_names(model):
        st = opt.state.get(getattr(model, name), {})
        if st:
            out[f"adam.{name}.exp_avg"] = st["exp_avg"]
            out[f"adam.{name}.exp_avg_sq"] = st["exp_avg_sq"]
            out[f"adam.{name}.step"] = torch.as_tensor(st["step"], dtype=torch.float64).reshape(1)
    out["step"] = torch.tensor([step], dtype=torch.int64)
    return out


def restore_state(model: AttnOnlyTransformer, opt: torch.optim.AdamW, path: Path) -> int:
    """Load train_state.safetensors into model and optimizer; returns the step."""
    st = load_safetensors(path)
    if "step" not in st:
        raise QkovError(f"{path} has no step: it is not a qkov train state; retrain or remove it")
    model.load_weights(
        {k[len("model.") :]: v for k, v in st.items() if k.startswith("model.")}, source=str(path)
    )
    for name in _trainable_names(model):
        p = getattr(model, name)
        if f"adam.{name}.exp_avg" in st:
            opt.state[p] = {
                "step": torch.tensor(float(st[f"adam.{name}.step"].item())),
                "exp_avg": st[f"adam.{name}.exp_avg"].to(p.device).clone(),
                "exp_avg_sq": st[f"adam.{name}.exp_avg_sq"].to(p.device).clone(),
            }
    return int(st["step"].item())


def check_device(device: str) -> None:
    """Refuse a device torch cannot use here with one clear line (not a torch traceback)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise QkovError(f"--device {device!r} is not a device: use cpu or cuda") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise QkovError(f"--device {device}: no CUDA GPU is available here; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise QkovError(f"--device {device}: only {torch.cuda.device_count()} GPU(s) here")
    elif dev.type != "cpu":
        raise QkovError(f"--device {device!r} is not supported: use cpu or cuda")


def versions() -> dict[str, str]:
    import qkov

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "qkov": qkov.__version__,
        "platform": platform.platform(),
    }


class TrainingInterrupted(KeyboardInterrupt):
    """Raised after the checkpoint a SIGINT or SIGTERM asked for; `signum` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _StopFlag:
    """SIGTERM/SIGINT set a flag; the loop checkpoints and exits at the next step boundary."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def _read_metrics(path: Path, upto_step: int) -> list[str]:
    if not path.is_file():
        return []
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line from a killed run
        if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] <= upto_step:
            keep.append(line)
    return keep


def train(
    model_cfg: ModelConfig | None,
    tc: TrainConfig,
    out_dir: str | Path,
    resume: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
    data: Any = None,
) -> AttnOnlyTransformer:
    """Train an attention-only model into `out_dir`; resume from its train state if asked.

    model_cfg: None on resume (read from out_dir/config.json). d_vocab is taken from the
    corpus tokenizer. stop_after: stop (with a checkpoint) after this step, keeping the
    schedule of `tc.steps` (used to test resume)."""
    from qkov.data import prepare

    out = Path(out_dir)
    state_path = out / "train_state.safetensors"
    if resume:
        if not state_path.is_file():
            raise QkovError(f"cannot resume: {state_path} does not exist; start without --resume")
        saved_cfg = ModelConfig.load(out / "config.json")
        saved_tc = read_json(out / "train_config.json")
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        if not isinstance(saved_tc, dict) or not set(saved_tc) <= known or "steps" not in saved_tc:
            raise QkovError(
                f"{out / 'train_config.json'} is not a qkov TrainConfig (known keys: "
                f"{sorted(known)}): restore it from the run"
            )
        if model_cfg is not None and model_cfg != saved_cfg:
            raise QkovError(
                f"--resume: the model flags disagree with {out / 'config.json'}: "
                "drop the model flags when resuming"
            )
        model_cfg = saved_cfg
        # Steps may be extended on resume; everything else comes from the run.
        try:
            saved = TrainConfig(**saved_tc)
        except (TypeError, OverflowError) as e:  # a value of the wrong type: "lr": "fast"
            raise QkovError(
                f"{out / 'train_config.json'} has a bad value ({e}): restore it from the run"
            ) from None
        tc = dataclasses.replace(saved, steps=max(tc.steps, saved.steps), device=tc.device)
    elif state_path.is_file():
        raise QkovError(
            f"{out} already holds a training run: pass --resume to continue it, "
            "or choose another --out"
        )
    start = None
    if tc.init_from is not None and not resume:
        start = _init_weights(tc.init_from, model_cfg)
        model_cfg = start.cfg
    if model_cfg is None:
        model_cfg = ModelConfig()
    check_device(tc.device)
    dd = distributed.setup(tc.device, tc.batch_size)  # torchrun: rank, world, device
    device = dd.device

    with distributed.main_first(dd):  # rank 0 fills the token cache, then the others read it
        data = data if data is not None else prepare(tc.corpus, model_cfg.d_vocab)
    if data.d_vocab != model_cfg.d_vocab:
        if resume:
            raise QkovError(
                f"corpus tokenizer has {data.d_vocab} tokens but {out} has "
                f"d_vocab={model_cfg.d_vocab}: resume with the same --corpus"
            )
        if start is not None:
            raise QkovError(
                f"--init-from {tc.init_from} has d_vocab={model_cfg.d_vocab} but the corpus "
                f"tokenizer has {data.d_vocab} tokens: use the corpus and --vocab-size it was "
                "trained with"
            )
        model_cfg = dataclasses.replace(model_cfg, d_vocab=data.d_vocab)
    if start is not None and start.tokenizer is not None and data.tokenizer is not None:
        if start.tokenizer.get_vocab() != data.tokenizer.get_vocab():
            raise QkovError(
                f"--init-from {tc.init_from} was trained with another tokenizer than this "
                "corpus's: use the corpus it was trained on"
            )

    torch.manual_seed(tc.seed)
    model = AttnOnlyTransformer(model_cfg).to(device)
    if start is not None:
        model.load_weights(start.weights(), source=tc.init_from)
    model.tokenizer = data.tokenizer
    opt = _make_optimizer(model, tc)
    step = 0
    if resume:
        step = restore_state(model, opt, state_path)
        if dd.main:  # temp files of writes a kill interrupted (qkov.io names them .NAME.*.tmp)
            for stale in out.glob(".*.tmp"):
                stale.unlink(missing_ok=True)
    # Before anything is written: building the held-out batches checks that the data can
    # fill n_ctx (too small a corpus, too short a synthetic context), so a bad run leaves no files.
    val = data.val_batches(tc.batch_size, model_cfg.n_ctx, tc.eval_batches)
    metrics_path = out / "metrics.jsonl"
    if dd.main:  # only rank 0 writes files
        out.mkdir(parents=True, exist_ok=True)
        model_cfg.save(out / "config.json")
        atomic_write_text(out / "train_config.json", json.dumps(dataclasses.asdict(tc), indent=2))
        atomic_write_text(out / "versions.json", json.dumps(versions(), indent=2))
        if data.tokenizer is not None:
            atomic_write_text(out / "tokenizer.json", data.tokenizer.to_str())
        text = "".join(s + "\n" for s in _read_metrics(metrics_path, step))
        atomic_write_text(metrics_path, text)

    probe = _probe_fn() if tc.probe_interval else None
    last = min(tc.steps, stop_after) if stop_after is not None else tc.steps
    tokens_per_step = tc.batch_size * model_cfg.n_ctx
    use_bf16 = torch.device(device).type == "cuda"

    def checkpoint(at: int) -> None:
        # Only weights with a finite loss are written, so a divergence never replaces the
        # last good checkpoint (the train loss of step `at` is only seen at the next step).
        # Every rank checks (same weights, same batch), so all ranks stop together.
        held_out = evaluate(model, val[:1])
        if not math.isfinite(held_out):
            raise QkovError(
                f"loss became {held_out} at step {at} (held-out batch): training stopped; the "
                f"last good checkpoint in {out} is kept; lower --lr or --grad-clip and --resume"
            )
        if not dd.main:
            return
        # model.safetensors first: a directory that --resume accepts is always loadable.
        try:
            atomic_save_safetensors(
                out / "model.safetensors",
                model.weights(),
                metadata={"format": "qkov", "step": str(at)},
            )
            atomic_save_safetensors(state_path, state_tensors(model, opt, at))
        except OSError as e:  # the atomic writes left the previous files in place
            raise QkovError(
                f"cannot write the step {at} checkpoint to {out} ({e.strerror or e}): is the "
                "disk full? free space, then --resume from the last complete checkpoint"
            ) from None

    bar = tqdm(
        total=last,
        initial=step,
        disable=not (progress and dd.main) or None,
        unit="step",
        desc=f"train {out.name}",
        dynamic_ncols=True,
    )
    t_last, tokens_since = time.perf_counter(), 0
    model.train()
    fwd = distributed.wrap(model, dd)  # DDP under torchrun: averages gradients over ranks
    mpath = metrics_path if dd.main else os.devnull
    with open(mpath, "a", encoding="utf-8") as mf, _StopFlag() as stop:
        while step < last:
            batch = data.train_batch(step, tc.batch_size, model_cfg.n_ctx, tc.seed)
            batch = distributed.share(batch, dd).to(device)  # this rank's rows
            lr = tc.lr_at(step)
            for g in opt.param_groups:
                g["lr"] = lr
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
                loss = fwd(batch[:, :-1], batch[:, 1:])  # fused unembed + loss
            # Mean over ranks (same on all), and whether any rank was asked to stop.
            loss_value, stopping = distributed.mean_and_any(
                loss.item(), stop.signum is not None, dd
            )
            if not math.isfinite(loss_value):
                raise QkovError(
                    f"loss became {loss_value} at step {step}: training stopped; the last good "
                    f"checkpoint in {out} is kept; lower --lr or --grad-clip and --resume"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            opt.step()
            step += 1
            tokens_since += tokens_per_step
            bar.update(1)
            logged = step % tc.eval_interval == 0 or step == last
            if dd.main and (logged or (probe and step % tc.probe_interval == 0)):
                now = time.perf_counter()
                rec: dict[str, Any] = {
                    "step": step,
                    "tokens": step * tokens_per_step,
                    "train_loss": round(loss_value, 5),
                    "lr": lr,
                    "tokens_per_s": round(tokens_since / (now - t_last), 1),
                }
                if logged:
                    rec["val_loss"] = round(evaluate(model, val), 5)
                if probe and step % tc.probe_interval == 0:
                    model.eval()
                    # A score with no head to measure (0 layers) is NaN: leave it out.
                    rec.update(
                        {
                            k: round(float(v), 5)
                            for k, v in probe(model).items()
                            if math.isfinite(float(v))
                        }
                    )
                    model.train()
                mf.write(json.dumps(rec) + "\n")
                mf.flush()
                bar.set_postfix(
                    loss=f"{loss_value:.3f}",
                    val=rec.get("val_loss", "-"),
                    tok_s=f"{rec['tokens_per_s']:.0f}",
                )
                t_last, tokens_since = time.perf_counter(), 0
            if step % tc.ckpt_interval == 0 or step == last:
                checkpoint(step)
            if stopping:
                checkpoint(step)
                bar.close()
                # Another rank may have been the one signalled: report SIGTERM then.
                raise TrainingInterrupted(stop.signum or signal.SIGTERM)
    bar.close()
    distributed.teardown(dd)
    return model


def _init_weights(path: str, model_cfg: ModelConfig | None) -> AttnOnlyTransformer:
    """The model a fine-tuning run starts from; its config is the run's config."""
    from qkov.checkpoint import load

    start = load(path)
    if model_cfg is not None and model_cfg != start.cfg:
        raise QkovError(
            f"--init-from {path} has config {start.cfg.to_dict()}, which the model flags "
            "contradict: drop the model flags (the config comes from --init-from)"
        )
    return start


def _probe_fn():
    from qkov.training_probe import training_probe

    return training_probe
