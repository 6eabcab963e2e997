"""The resumable state of a run: train_state.safetensors holds the weights, the AdamW
moments and step counts, and the step, so `--resume` continues bit-exactly on CPU."""

from __future__ import annotations

from pathlib import Path

import torch

from qkov.checkpoint import load_safetensors
from qkov.errors import QkovError
from qkov.model import AttnOnlyTransformer

STATE = "train_state.safetensors"


def _trainable_names(model: AttnOnlyTransformer) -> list[str]:
    return [n for n in model.weights() if getattr(model, n).requires_grad]


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
    # Through AdamW's own load_state_dict, which puts each tensor where this optimizer keeps
    # it: the moments on the parameter's device and dtype, the step counts on the CPU, or on
    # the parameter's device for a fused (or capturable) AdamW, as a GPU's fused kernel needs.
    index = {id(p): i for i, p in enumerate(p for g in opt.param_groups for p in g["params"])}
    state = {}
    for name in _trainable_names(model):
        p = getattr(model, name)
        if f"adam.{name}.exp_avg" in st:
            state[index[id(p)]] = {
                "step": torch.tensor(float(st[f"adam.{name}.step"].item())),
                "exp_avg": st[f"adam.{name}.exp_avg"],
                "exp_avg_sq": st[f"adam.{name}.exp_avg_sq"],
            }
    opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})
    return int(st["step"].item())


def remove_stale_temp_files(run_dir: Path) -> None:
    """Delete the temp files of writes a kill interrupted (qkov.io names them .NAME.*.tmp)."""
    for stale in Path(run_dir).glob(".*.tmp"):
        stale.unlink(missing_ok=True)
