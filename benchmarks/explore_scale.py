"""`qkov explore`, `qkov circuits` and `qkov heads` at GPT-2-small shape and larger: seconds
and peak RSS of each question against interactive targets, on this machine.

A random GPT-2-small-shaped Hugging Face folder (as `analyze_scale.py` writes it, plus the
shipped attn2's tokenizer.json: 2,048 tokens of the 50,257 ids, enough to type text), or
with `--shape gpt2-medium | pythia-410m | tinyllama-1.1b` one built by `hf_shapes.py` (with
a tokenizer of the real one's size; the text is cut to its first 48 tokens), is read by
`Explorer` in this process (the folder is built in a child, so this process's peak RSS
is the explorer's): a 48-token text through the model (`/api/run`: tokens,
patterns, predictions, the attribution's paths), every head's role (`/api/heads`,
classify_heads, once per model) and one head's panel (`/api/head`). Then `qkov circuits`
and `qkov heads` run on the folder, each in a child process (its wall time and peak
RSS from /usr/bin/time).

    python benchmarks/explore_scale.py [--shape gpt2-small] [--n-layers 12] [--keep DIR]
                                       [--skip-circuits]
"""

from __future__ import annotations

import argparse
import gc
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from analyze_scale import write_gpt2_folder  # noqa: E402
from hf_shapes import SHAPES  # noqa: E402

from qkov.demo_models import shipped  # noqa: E402

TEXT = "def mean(values):\n    total = sum(values)\n    return total / len(values)\n" * 2
TARGETS = {"run": 10.0, "roles": 30.0, "head": 5.0, "circuits": 300.0, "heads": 60.0}  # s
LARGER = {"roles": 60.0}  # past GPT-2 small (384-704 heads): /api/heads within a minute
N_TOKENS = 48


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="gpt2-small", choices=["gpt2-small", *SHAPES])
    ap.add_argument("--n-layers", type=int, default=12)
    ap.add_argument("--keep", type=Path, help="write the folder here (default: tmp)")
    ap.add_argument("--skip-circuits", action="store_true", help="and qkov heads")
    args = ap.parse_args()
    from qkov.explore.session import Explorer

    root = args.keep or Path(tempfile.mkdtemp(prefix="qkov-explore-scale-"))
    text, targets = TEXT, TARGETS
    if args.shape == "gpt2-small":
        folder = root / "gpt2-small-random"
        if not (folder / "model.safetensors").exists():
            torch.manual_seed(0)
            write_gpt2_folder(folder, args.n_layers, 12, 768, 50257)
        tokenizer = (shipped("attn2") / "tokenizer.json").read_bytes()
        (folder / "tokenizer.json").write_bytes(tokenizer)
        title = f"GPT-2-small-shaped random checkpoint ({args.n_layers} layers x 12 heads)"
    else:
        # built in a child: transformers' model in this process would count in its peak RSS
        script = Path(__file__).parent / "hf_shapes.py"
        subprocess.run([sys.executable, str(script), str(root), args.shape], check=True)
        folder = root / args.shape
        title = f"random {args.shape}-shaped checkpoint"
        targets = TARGETS | LARGER
    ex = Explorer.from_dirs([folder])
    name = ex.list()[0]["name"]
    if args.shape != "gpt2-small":
        tok = ex.model(name).model.tokenizer
        ids = tok.encode(TEXT).ids[:N_TOKENS]
        text = TEXT[: tok.encode(TEXT).offsets[N_TOKENS - 1][1]] if len(ids) == N_TOKENS else TEXT
    times = {}
    for what, ask in (
        ("run", lambda: ex.run(name, text)),
        ("run again", lambda: ex.run(name, text[:-1])),  # the first folded the model, once
        ("roles", lambda: ex.roles(name)),
        ("head", lambda: ex.head(name, 1, 3)),
    ):
        t = time.perf_counter()
        answer = ask()
        times[what] = time.perf_counter() - t
        if what == "run":
            n_tokens = len(answer["tokens"])
            paths = {p["name"] for q in answer["predictions"] for p in q["attribution"]["paths"]}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    print(f"qkov explore, {title}")
    print(f"  /api/run, {n_tokens} tokens ({len(paths)} distinct top paths shown, e.g. "
          f"{sorted(paths)[:3]})")  # fmt: skip
    for what, label in (
        ("run", "/api/run"),
        ("run again", "/api/run, again"),
        ("roles", "/api/heads (once)"),
        ("head", "/api/head"),
    ):
        t, target = times[what], targets[what.split()[0]]
        print(f"  {label:<18} {t:7.1f} s   target <= {target:5.0f} s   ratio {t / target:.2f}")
    print(f"  peak RSS of the explorer process {rss:.2f} GB")
    ex.models.clear()  # the children below load the model again: not two copies at once
    answer = None
    gc.collect()
    if args.skip_circuits:
        return 0
    qkov = [sys.executable, "-m", "qkov"]
    for label, cmd in (
        ("qkov circuits", [*qkov, "circuits", str(folder), "-k", "3", "--split-k", "3"]),
        ("qkov heads", [*qkov, "heads", str(folder)]),
    ):
        wall, peak_gb = _timed(cmd)
        if wall is None:
            print(f"{label} failed (exit {peak_gb})")
            return 1
        target = TARGETS[label.split()[1]]
        print(
            f"  {label:<18} {wall:7.1f} s   target <= {target:5.0f} s   ratio "
            f"{wall / target:.2f}   peak RSS {peak_gb:.2f} GB"
        )
    return 0


def _timed(cmd: list[str]) -> tuple[float | None, float]:
    """(wall seconds, peak RSS in GB) of one child process (/usr/bin/time -f %e %M), its
    stdout dropped and its stderr (progress) passed through; (None, exit code) if it fails."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as f:
        done = subprocess.run(
            ["/usr/bin/time", "-f", "%e %M", "-o", f.name, *cmd], stdout=subprocess.DEVNULL
        )
        if done.returncode != 0:
            return None, done.returncode
        wall, kib = f.read().split()[-2:]
    return float(wall), int(kib) / 2**20


if __name__ == "__main__":
    sys.exit(main())
