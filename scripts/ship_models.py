"""Copy trained run directories into src/qkov/demo_models/ (what `qkov demo` analyses).

Usage: python scripts/ship_models.py runs/attn0 runs/attn1 runs/attn2
       python scripts/ship_models.py runs/attn2 --float16     # weights halved (qkov.load upcasts)
       python scripts/ship_models.py runs/attn2-ft --name attn2 --base src/qkov/demo_models/attn2
       python scripts/ship_models.py --token-counts src/qkov/demo_models/attn*
       python scripts/ship_models.py runs/attn2 --dest /tmp/shipped   # elsewhere than the package
Copies config.json, model.safetensors, tokenizer.json, token_counts.json, train_config.json,
versions.json, metrics.jsonl and heldout.json (the optimizer state is left out: it is only needed to
resume). A run trained `--init-from` a base run is shipped with --base: the base's record
(all but its weights) goes to NAME/base/, where `qkov demo --train` and the report's
training curve find it. Every run and the base are checked before anything is written: a
missing file is one line and exit 2.
--token-counts writes token_counts.json into model folders trained before runs wrote it:
the train split of their corpus, encoded with their own tokenizer.json, as training does."""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path

from safetensors import safe_open

RECORD = ("config.json", "train_config.json", "versions.json", "metrics.jsonl", "shipped.json")
FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "token_counts.json",
    "train_config.json",
    "versions.json",
)
DEST = Path(__file__).resolve().parent.parent / "src" / "qkov" / "demo_models"


def clean_metrics(text: str) -> str:
    """Strict JSON lines: runs from before the NaN filter wrote NaN for 0-layer probes."""
    out = []
    for line in text.splitlines():
        rec = json.loads(line)
        rec = {k: v for k, v in rec.items() if not (isinstance(v, float) and not math.isfinite(v))}
        out.append(json.dumps(rec))
    return "\n".join(out) + "\n"


def float16_weights(src: Path, dest: Path) -> bool:
    """Write src's weights in float16 to dest, with src's metadata and dtype "float16" (qkov's
    loader upcasts them to float32); False, writing nothing, if a weight overflows float16."""
    import torch
    from safetensors.torch import load_file

    from qkov.io import atomic_save_safetensors  # metadata keys sorted: reproducible bytes

    with safe_open(str(src), "pt") as f:
        meta = dict(f.metadata() or {})
    half = {k: v.half() for k, v in load_file(str(src)).items()}
    if not all(torch.isfinite(v).all() for v in half.values()):
        return False
    atomic_save_safetensors(dest, half, metadata=meta | {"format": "qkov", "dtype": "float16"})
    return True


def missing(folder: Path, files: tuple[str, ...]) -> str | None:
    """What is wrong with `folder` as a source of `files`, or None."""
    if not folder.is_dir():
        return f"{folder} is not a folder: pass a run directory written by `qkov train`"
    lacking = [f for f in files if not (folder / f).is_file()]
    if lacking:
        return f"{folder} has no {', '.join(lacking)}: pass a run directory written by `qkov train`"
    return None


def main(
    runs: list[str],
    name: str | None = None,
    base: str | None = None,
    float16: bool = False,
    dest_root: Path = DEST,
) -> None:
    if (name or base) and len(runs) != 1:
        raise SystemExit("--name and --base ship one run")
    problems = [missing(Path(r), (*FILES, "metrics.jsonl")) for r in runs]
    if base:
        problems.append(missing(Path(base), RECORD))
    if not dest_root.is_dir():
        problems.append(f"{dest_root} is not a folder: pass --dest an existing folder")
    for problem in problems:
        if problem:
            print(f"ship_models.py: error: {problem}", file=sys.stderr)
            raise SystemExit(2)
    # Read the base record first: it may be the folder this run is about to replace.
    base_files = {f: (Path(base) / f).read_bytes() for f in RECORD} if base else {}
    for run in map(Path, runs):
        dest = dest_root / (name or run.name)
        dest.mkdir(parents=True, exist_ok=True)
        for f in FILES:
            shutil.copy2(run / f, dest / f)
        if float16 and not float16_weights(run / "model.safetensors", dest / "model.safetensors"):
            raise SystemExit(f"{run}: a weight overflows float16; ship it without --float16")
        if (run / "heldout.json").is_file():  # runs before 2026-12-06 did not write it
            shutil.copy2(run / "heldout.json", dest / "heldout.json")
        metrics = clean_metrics((run / "metrics.jsonl").read_text())
        with safe_open(str(run / "model.safetensors"), "pt") as f:
            step = int(f.metadata()["step"])  # the step these weights are from
        (dest / "metrics.jsonl").write_text(metrics)
        # The step the run stopped at: `qkov demo --train` stops there too (the schedule
        # in train_config.json may be longer; a run stopped early resumes exactly).
        (dest / "shipped.json").write_text(json.dumps({"step": step}) + "\n")
        if base_files:
            (dest / "base").mkdir(exist_ok=True)
            for f, data in base_files.items():
                (dest / "base" / f).write_bytes(data)
        print(f"shipped {run} -> {dest}" + (f" (base record from {base})" if base else ""))


def train_token_counts(model_dir: Path) -> list[int]:
    """Counts per token id of the train split of the model's corpus, encoded with its
    tokenizer.json: the split and encoding of qkov.data.prepare, counted as training does."""
    import tempfile

    import numpy as np
    from tokenizers import Tokenizer

    from qkov.data import load_corpus
    from qkov.data.dataset import _encode_split

    corpus = json.loads((model_dir / "train_config.json").read_text())["corpus"]
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    train_docs, _ = load_corpus(corpus).split()  # prepare's val_fraction
    with tempfile.TemporaryDirectory() as tmp:
        n = _encode_split(tok, [d.text for d in train_docs], Path(tmp) / "t", np.uint32, "count")
        ids = np.fromfile(Path(tmp) / "t", dtype=np.uint32, count=n)
    return np.bincount(ids, minlength=tok.get_vocab_size()).tolist()


def write_token_counts(model_dirs: list[str]) -> None:
    from qkov.checkpoint import write_token_counts

    cache: dict[tuple[str, str], list[int]] = {}  # the demo models share corpus and tokenizer
    for d in map(Path, model_dirs):
        corpus = json.loads((d / "train_config.json").read_text())["corpus"]
        key = (corpus, (d / "tokenizer.json").read_text())
        if key not in cache:
            cache[key] = train_token_counts(d)
        write_token_counts(d / "token_counts.json", cache[key], corpus)
        print(f"wrote {d / 'token_counts.json'} ({sum(cache[key]):,} tokens of {corpus})")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--name", help="folder name under src/qkov/demo_models (default: the run's)")
    ap.add_argument("--base", help="the record of the run this one was --init-from")
    ap.add_argument(
        "--token-counts", action="store_true", help="write token_counts.json into these folders"
    )
    ap.add_argument("--float16", action="store_true", help="ship the weights in float16")
    ap.add_argument("--dest", type=Path, default=DEST, help="where the model folders go")
    a = ap.parse_args()
    if a.token_counts:
        write_token_counts(a.runs)
    else:
        main(a.runs, a.name, a.base, a.float16, a.dest)
