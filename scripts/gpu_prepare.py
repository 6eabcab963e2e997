"""Make, on the CPU machine, everything one GPU call needs; print that call.

    python scripts/gpu_prepare.py            # writes .gpu/ (git-ignored), prints the call

A GPU is lent to few sessions, for 15 minutes in all, and its machine reaches no network:
what it needs must travel with the working tree (at most 64 MiB), and nothing may be left
to make there. This script writes into .gpu/:

- stdlib311.tar.gz: the .py files of the default corpus (this machine's Python 3.11
  library, at the path scripts/gpu_train.py unpacks them to), so document names, the
  held-out split and the tokenizer are the ones the shipped models were trained on;
- cache/: the token streams of the default corpus for each vocabulary the round-2 and
  round-3 runs use, xz-compressed (scripts/gpu_session.sh unpacks them); the 2,048-token
  tokenizer is checked equal to the shipped models' own;
- wheels/: TransformerLens 3.9 and the packages it needs that the GPU image lacks (for
  benchmarks/gpu.py's comparison), as wheels.

Then it checks the size of what would travel and prints the one device call that runs
scripts/gpu_session.sh (issue 19's benchmark, then round 3 of issue 18's sweep).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import lzma
import os
import shlex
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "scripts"))

from gpu_train import COMMON, ROUND2_RUNS, ROUND3_RUNS, STDLIB  # noqa: E402

LIMIT = 64 * 2**20  # what the device tool copies: tracked and untracked files, carried paths
# TransformerLens and what it imports that the GPU image does not hold (its image has torch,
# transformers, accelerate, jaxtyping, einops, pandas, rich, ...; `datasets` gets a stand-in
# in benchmarks/gpu.py)
WHEELS = ("transformer-lens", "beartype", "better-abc", "fancy-einsum", "typeguard")
SHIPPED_TOKENIZER = ROOT / "src" / "qkov" / "demo_models" / "attn2" / "tokenizer.json"


def vocab_sizes(runs: dict[str, tuple[str, str]]) -> list[int]:
    """The vocabularies the runs train on: each run's last --vocab-size (its flags come after
    COMMON's, so they win)."""
    sizes = set()
    for _, flags in runs.values():
        words = f"{COMMON} {flags}".split()
        at = [i for i, w in enumerate(words) if w == "--vocab-size"]
        sizes.add(int(words[at[-1] + 1]))
    return sorted(sizes)


def stdlib_tar(out: Path) -> int:
    """The library's corpus files under their path relative to STDLIB's parent."""
    from qkov.data.corpus import stdlib_files, stdlib_root

    os.environ.pop("QKOV_STDLIB", None)
    if str(stdlib_root()) != STDLIB:
        sys.exit(
            f"gpu_prepare: this Python's library is {stdlib_root()}, not {STDLIB}: run it with "
            "the Python 3.11.7 the shipped models' corpus came from"
        )
    files = stdlib_files()
    with tarfile.open(out, "w:gz") as tar:
        for f in sorted(files):
            tar.add(f, arcname=str(f.relative_to(Path(STDLIB).parent)), recursive=False)
    return len(files)


def token_caches(cache: Path, sizes: list[int]) -> None:
    """Each vocabulary's token stream (qkov.data.prepare), then each cache folder as one
    .tar.xz: the raw streams of 2,048 and 8,192 tokens are 38 MB."""
    from qkov.data import prepare

    raw = cache / "raw"
    for v in sizes:
        print(f"token stream, vocabulary {v} ...", flush=True)
        prepare("stdlib", v, cache_dir=raw)
    for folder in sorted(p for p in raw.iterdir() if p.is_dir() and not p.name.startswith(".")):
        packed = cache / f"{folder.name}.tar.xz"
        if packed.exists():
            continue
        with lzma.open(packed, "wb", preset=6) as xz, tarfile.open(fileobj=xz, mode="w") as tar:
            tar.add(folder, arcname=folder.name)
    if 2048 in sizes:
        meta = [p for p in raw.glob("*-v2048-*/tokenizer.json")]
        shipped = json.loads(SHIPPED_TOKENIZER.read_text(encoding="utf-8"))
        if len(meta) != 1 or json.loads(meta[0].read_text(encoding="utf-8")) != shipped:
            sys.exit(
                "gpu_prepare: the 2,048-token tokenizer made here differs from the shipped "
                f"models' ({SHIPPED_TOKENIZER}): models trained on it could not share their "
                "evaluation set; check the library and the tokenizers version"
            )
        print("the 2,048-token tokenizer equals the shipped models' own")


def wheels(dest: Path) -> None:
    """This venv's versions of WHEELS, as wheels (built here where only a source archive
    exists); the GPU machine installs them with --no-deps."""
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in WHEELS]
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dest), *pins]
    subprocess.run(cmd, check=True)


def carried(out: Path) -> list[Path]:
    """What the device call carries: the library, the wheels, the packed token streams."""
    return [out / "stdlib311.tar.gz", out / "wheels", *sorted((out / "cache").glob("*.tar.xz"))]


def travelling_bytes(carry: list[Path]) -> int:
    """Tracked and untracked-not-ignored files of the checkout, plus the carried paths."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "-co", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    files = [ROOT / p.decode() for p in listed if p]
    for c in carry:
        files += [f for f in c.rglob("*")] if c.is_dir() else [c]
    return sum(f.stat().st_size for f in files if f.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / ".gpu")
    out = ap.parse_args().out.resolve()
    out.mkdir(exist_ok=True)
    tar = out / "stdlib311.tar.gz"
    if not tar.exists():
        print(f"{tar.name}: {stdlib_tar(tar)} files, {tar.stat().st_size / 2**20:.1f} MiB")
    token_caches(out / "cache", vocab_sizes(ROUND2_RUNS | ROUND3_RUNS))
    wheels(out / "wheels")
    carry = carried(out)
    size = travelling_bytes(carry)
    print(f"the working tree with .gpu/ carried: {size / 2**20:.1f} MiB of {LIMIT / 2**20:.0f}")
    if size > LIMIT:
        sys.exit("gpu_prepare: over the device tool's limit: see what is large with du -sh .gpu/*")
    print("\nThe device call (tool `run`), timeout_s 600:")
    print(f"  carry: {json.dumps([str(c.relative_to(ROOT)) for c in carry])}")
    print(f"  command: {shlex.quote('bash scripts/gpu_session.sh')}")


if __name__ == "__main__":
    main()
