"""`qkov analyze` at GPT-2-small shape and larger: wall time and peak RSS against the
targets (<= 10 minutes, <= 8 GB at GPT-2 small, <= 12 GB at 1B, on the project's 2-core CPU).

The default: a random GPT-2-small-shaped Hugging Face folder (12 layers x 12 heads, d_model
768, d_mlp 3072, d_vocab 50257, n_ctx 1024; std-0.02 weights, as GPT-2 initialises) written
with safetensors (no transformers needed). `--shape gpt2-medium | pythia-410m |
tinyllama-1.1b | llama-3.2-1b`: a folder of that shape built offline by transformers
(`hf_shapes.py`, stored in the hub's dtype), whose logits are first checked against
transformers'. Then
`qkov analyze` runs on it in a child process, so its peak RSS is that child's alone
(`os.wait4`'s resource usage of that process: RUSAGE_CHILDREN would also count the logit
check's child, which holds the model twice, in transformers and in qkov).

    python benchmarks/analyze_scale.py [--shape gpt2-small] [--n-layers 12] [--n-heads 12]
                                       [--d-model 768] [--d-vocab 50257] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
from hf_shapes import SHAPES, build  # noqa: E402

TARGET_S = 600
TARGET_GB = {"gpt2-small": 8.0, "gpt2-medium": 12.0, "pythia-410m": 12.0,
             "tinyllama-1.1b": 12.0, "llama-3.2-1b": 12.0}  # fmt: skip


def write_gpt2_folder(out: Path, n_layers: int, n_heads: int, d_model: int, d_vocab: int) -> None:
    """config.json + model.safetensors of a random GPT-2 (Conv1D layout, tied W_U)."""
    D, M, n_ctx = d_model, 4 * d_model, 1024
    g = torch.Generator().manual_seed(0)
    rand = lambda *shape: torch.randn(*shape, generator=g) * 0.02  # noqa: E731
    t = {"wte.weight": rand(d_vocab, D), "wpe.weight": rand(n_ctx, D)}
    t |= {"ln_f.weight": torch.ones(D), "ln_f.bias": torch.zeros(D)}
    for l in range(n_layers):
        p = f"h.{l}."
        t |= {p + "ln_1.weight": torch.ones(D), p + "ln_1.bias": torch.zeros(D)}
        t |= {p + "ln_2.weight": torch.ones(D), p + "ln_2.bias": torch.zeros(D)}
        t |= {p + "attn.c_attn.weight": rand(D, 3 * D), p + "attn.c_attn.bias": torch.zeros(3 * D)}
        t |= {p + "attn.c_proj.weight": rand(D, D), p + "attn.c_proj.bias": torch.zeros(D)}
        t |= {p + "mlp.c_fc.weight": rand(D, M), p + "mlp.c_fc.bias": torch.zeros(M)}
        t |= {p + "mlp.c_proj.weight": rand(M, D), p + "mlp.c_proj.bias": torch.zeros(D)}
    out.mkdir(parents=True, exist_ok=True)
    save_file(t, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = {
        "model_type": "gpt2",
        "n_layer": n_layers,
        "n_head": n_heads,
        "n_embd": D,
        "n_positions": n_ctx,
        "vocab_size": d_vocab,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="gpt2-small", choices=["gpt2-small", *SHAPES])
    ap.add_argument("--n-layers", type=int, default=12)
    ap.add_argument("--n-heads", type=int, default=12)
    ap.add_argument("--d-model", type=int, default=768)
    ap.add_argument("--d-vocab", type=int, default=50257)
    ap.add_argument("--keep", type=Path, help="write the folder and report here (default: tmp)")
    args = ap.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="qkov-scale-"))
    if args.shape == "gpt2-small":
        folder = root / "gpt2-small-random"
        write_gpt2_folder(folder, args.n_layers, args.n_heads, args.d_model, args.d_vocab)
        shape = f"{args.n_layers} layers x {args.n_heads} heads, d_model {args.d_model}"
        shape = f"GPT-2-small-shaped random checkpoint ({shape}, d_vocab {args.d_vocab})"
    else:
        folder = build(args.shape, root)
        check = [sys.executable, str(Path(__file__).parent / "hf_shapes.py"), "--check"]
        if subprocess.run([*check, str(root), args.shape]).returncode != 0:
            return 1
        shape = f"random {args.shape}-shaped checkpoint"
    cmd = [sys.executable, "-m", "qkov", "analyze", str(folder), "--out", str(root / "out")]
    start = time.perf_counter()
    child = subprocess.Popen(cmd)  # its stderr passes through: the progress of each stage
    _, status, usage = os.wait4(child.pid, 0)  # this child's own peak, not the check's
    wall = time.perf_counter() - start
    peak_gb = usage.ru_maxrss / 2**20  # KiB -> GiB
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        print(f"qkov analyze failed (exit {code}) after {wall:.0f} s")
        return 1
    target_gb = TARGET_GB[args.shape]
    print(f"qkov analyze, {shape}")
    print(f"  wall time {wall:7.1f} s   target <= {TARGET_S} s   ratio {wall / TARGET_S:.2f}")
    ratio = peak_gb / target_gb
    print(f"  peak RSS  {peak_gb:7.2f} GB  target <= {target_gb} GB  ratio {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
