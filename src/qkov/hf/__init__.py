"""Public checkpoints from a local Hugging Face folder, read with safetensors alone (no
`transformers` at run time, no pickle): GPT-2, GPT-NeoX/Pythia and the Llama family
(Llama, Mistral, Qwen2), each turned into qkov's Transformer with the same logits.

One module per family says how its config.json maps to a ModelConfig, which tensors (and
shapes) the folder must hold, and how they become the paper's matrices. Weights are upcast
to float32 by default (dtype=None keeps the stored bf16/fp16), so every analysis runs in
fp32 on a CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from qkov.config import ModelConfig
from qkov.errors import QkovError
from qkov.fold import fold_bytes
from qkov.hf import gpt2, gpt_neox, llama
from qkov.hf.folder import (
    CONFIG,
    TensorRef,
    download,
    is_hf_folder,
    load_tokenizer,
    read_config,
    read_tensors,
    tensor_index,
)
from qkov.model import Transformer
from qkov.resources import available_memory, size_str

# bytes per element of the safetensors dtypes public checkpoints use
_STORED_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "I64": 8, "I32": 4, "U8": 1, "BOOL": 1}

FAMILIES: dict[str, ModuleType] = {
    "gpt2": gpt2,
    "gpt_neox": gpt_neox,
    "llama": llama,
    "mistral": llama,
    "qwen2": llama,
}

__all__ = [
    "FAMILIES",
    "Folder",
    "check_memory",
    "download",
    "inspect_hf",
    "is_hf_folder",
    "load_hf",
]


@dataclass(frozen=True)
class Folder:
    """A Hugging Face folder as its config.json and file headers describe it, every check of
    `load_hf` passed and no weight read (`inspect_hf`)."""

    path: Path
    model_type: str  # config.json's (gpt2, gpt_neox, llama, mistral, qwen2)
    cfg: ModelConfig
    tokenizer: Any  # tokenizers.Tokenizer, or None without tokenizer.json
    index: dict[str, TensorRef]  # every tensor in the files, by its name there
    names: dict[str, str] = field(repr=False)  # name without the family's prefix -> in files
    hf: dict[str, Any] = field(repr=False)  # config.json

    @property
    def files(self) -> list[Path]:
        """The safetensors files the weights are in."""
        return sorted({ref.file for ref in self.index.values()})

    def load_bytes(self, dtype: torch.dtype | None) -> int:
        """Memory `load_hf(dtype=dtype)` holds at its peak, about: the stored weights qkov
        reads (held while they are rearranged) and the model's weights in `dtype` (None:
        the stored one). Measured at TinyLlama-1.1B in float32: 6.6 GB for 2.2 + 4.4."""
        stored = sum(
            math.prod(ref.shape) * _STORED_BYTES.get(ref.dtype, 4)
            for ref in (self.index[f] for f in self.names.values())
        )
        size = torch.empty(0, dtype=dtype).element_size() if dtype is not None else None
        return stored + (stored if size is None else self.cfg.n_params * size)

    def analysis_bytes(self) -> int:
        """Memory the analyses need at least: the float32 load (`load_bytes`), then the model
        and the fold every analysis reads (`qkov.fold.fold_bytes`), whichever is more; their
        own work comes on top (at TinyLlama-1.1B: 7.8 GB counted, 9.4-10.3 GB measured)."""
        fp32 = 4 * self.cfg.n_params
        return max(self.load_bytes(torch.float32), fp32 + fold_bytes(self.cfg))

    def stored_dtypes(self) -> list[str]:
        """The dtypes of the weights qkov reads, as safetensors names them (BF16, F32, ...)."""
        return sorted({self.index[f].dtype for f in self.names.values()})


def inspect_hf(path: str | Path) -> Folder:
    """Check a Hugging Face folder against its config.json from the file headers alone (no
    weight is read): the family is supported, every tensor it implies is there with its
    shape, no tensor is unknown, the tokenizer fits. Each failure is one QkovError line."""
    path = Path(path)
    hf = read_config(path)
    source = str(path / CONFIG)
    kind = hf.get("model_type")
    if kind not in FAMILIES:
        raise QkovError(
            f"{source}: model_type {kind!r} is not supported: qkov reads " + ", ".join(FAMILIES)
        )
    family = FAMILIES[kind]
    cfg = family.model_config(hf, source)
    tokenizer = load_tokenizer(path, cfg.d_vocab)
    index = tensor_index(path)
    names = _names(index, family)  # stripped name -> name in the files
    expected = family.hf_shapes(cfg, hf)
    allowed = expected | family.optional_shapes(cfg, hf)
    missing = [n for n in expected if n not in names]
    if missing:
        raise QkovError(
            f"{path} has no tensor {missing[0]!r}"
            + (f" (nor {len(missing) - 1} more)" if len(missing) > 1 else "")
            + f", which its {CONFIG} implies: do config.json and the weights belong together?"
        )
    unknown = sorted(n for n in names if n not in allowed)
    if unknown:
        raise QkovError(
            f"{path} holds tensors a {kind} model has no place for ({', '.join(unknown[:3])}"
            + (", ..." if len(unknown) > 3 else "")
            + "): do config.json and the weights belong together?"
        )
    for name in [n for n in allowed if n in names]:  # embeddings first: the clearest line
        file_name = names[name]
        ref = index[file_name]
        if ref.shape != allowed[name]:
            raise QkovError(
                f"{ref.file}: tensor {file_name} has shape {list(ref.shape)} but {CONFIG} "
                f"implies {list(allowed[name])}: do config.json and the weights belong together?"
            )
    return Folder(path, kind, cfg, tokenizer, index, names, hf)


def load_hf(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = torch.float32,
    *,
    for_analysis: bool = False,
) -> Transformer:
    """The model of a Hugging Face folder (config.json, model.safetensors or shards with
    model.safetensors.index.json, tokenizer.json if present) as a qkov Transformer.

    dtype: the weights' dtype in the model (float32 by default; None keeps the stored one).
    Everything is checked against config.json from the file headers before a weight is read
    (`inspect_hf`), and so is the memory: the load's (`Folder.load_bytes`), or with
    for_analysis (float32 on a CPU) the load's and the fold's every analysis makes
    (`Folder.analysis_bytes`), against what is available.

    With for_analysis (float32 on a CPU), a tied unembedding (the folder has no lm_head of
    its own) is W_E's own storage, transposed, not a copy: the model is for reading; an
    in-place write to W_E or W_U writes both (`qkov.save_model` still writes them apart)."""
    folder = inspect_hf(path)
    family, cfg = FAMILIES[folder.model_type], folder.cfg
    analysis = for_analysis and dtype == torch.float32 and torch.device(device).type == "cpu"
    check_memory(folder, dtype, analysis)
    tensors = read_tensors(folder.index, list(folder.names.values()))
    tensors = {s: tensors[f] for s, f in folder.names.items()}
    # Rearranged in the stored dtype, cast as each is copied into the model: upcasting
    # first held a 1B model's weights in fp32 twice (8.5 GB peak for TinyLlama, now 6.6).
    weights = family.convert(tensors, cfg, folder.hf)
    del tensors
    # A tied unembedding (no lm_head in the folder) is the embedding's transpose itself
    tied = weights["W_U"].data_ptr() == weights["W_E"].data_ptr()
    model = Transformer.empty(cfg, dtype=dtype or weights["W_E"].dtype)
    model.load_weights(weights, source=str(folder.path))
    model.tokenizer = folder.tokenizer
    if analysis and tied:  # read from W_E's storage: 1.05 GB less at Llama 3.2 1B
        W_E = model.W_E
        model._parameters["W_U"] = nn.Parameter(W_E.detach().T, W_E.requires_grad)
    return model.to(device)


def check_memory(folder: Folder, dtype: torch.dtype | None, analysis: bool) -> None:
    """Refuse, with one line, a load (and with `analysis` the fold after it) that needs
    more memory than is available."""
    need = folder.analysis_bytes() if analysis else folder.load_bytes(dtype)
    have = available_memory()
    if have is None or need <= have:
        return
    # a Python load can keep a 16-bit folder's dtype (half the memory); the commands cannot
    wide = dtype is not None and dtype.itemsize > 2
    halve = not analysis and wide and folder.stored_dtypes() != ["F32"]
    what = "loading and folding (as the analyses do)" if analysis else "loading"
    stored = "their stored dtype" if dtype is None else str(dtype).removeprefix("torch.")
    raise QkovError(
        f"{folder.path}: {what} its {_count(folder.cfg.n_params)} parameters in {stored} "
        f"takes {'at least' if analysis else 'about'} {size_str(need)}, and {size_str(have)} is "
        "available: free memory or use a larger machine"
        + (" (or keep the stored dtype: qkov.hf.load_hf(DIR, dtype=None))" if halve else "")
    )


def _count(n: int) -> str:
    """1100048384 -> 1.10B; 124439808 -> 124.4M; 9312 -> 9,312."""
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n:,}"


def _names(index: dict, family: ModuleType) -> dict[str, str]:
    """Tensor names without the family's prefix (transformer., gpt_neox., model.), leaving out
    the buffers old checkpoints saved (causal masks, rotary frequencies)."""
    out = {}
    for name in index:
        if name.endswith(family.IGNORED):
            continue
        out[name.removeprefix(family.PREFIX)] = name
    return out
