"""Bad inputs: each gets ONE clear error line (what is wrong, how to mend) and exit status 2
from the CLI, or a QkovError from the library; never a traceback, and nothing already
written is lost. scripts/bad_inputs_table.py prints these cases as a markdown table."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from qkov import ModelConfig, QkovError, load
from qkov.checkpoint import load_pt_weights
from qkov.cli import main
from tiny import tiny_flags

SMALL = tiny_flags()


def write_corpus(root: Path) -> Path:
    """A folder of small Python-like text files (enough for a 300-token BPE)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "value", "count", "index", "total", "name"]
    for i in range(30):
        lines = [
            f"def {rng.choice(words)}_{j}({rng.choice(words)}):\n    return {j}\n"
            for j in range(50)
        ]
        (root / f"mod_{i:02d}.py").write_text("".join(lines), encoding="utf-8")
    return root


def train_tiny_run(corpus: Path, out: Path) -> Path:
    """A 4-step, 1-layer run directory (config, weights, train state, tokenizer, metrics)."""
    code = main(
        [
            "train",
            "--corpus",
            str(corpus),
            *SMALL,
            "--steps",
            "4",
            "--eval-interval",
            "2",
            "--ckpt-interval",
            "2",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    return out


@dataclass
class Env:
    corpus: Path  # tiny text corpus
    run: Path  # a fresh copy of a tiny trained run, per case
    tmp: Path  # an empty folder, per case


def cli(*argv: str) -> tuple[int, str]:
    """Run `qkov ARGV` in-process; (exit status, stderr)."""
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:  # argparse
            code = e.code
    return code, err.getvalue()


def lib(fn: Callable[[], object]) -> tuple[int, str]:
    """Call a library function that must raise QkovError; (2, its message) like the CLI."""
    try:
        fn()
    except QkovError as e:
        return 2, f"QkovError: {e}\n"
    raise AssertionError(f"{fn} did not raise QkovError")


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


# ---------------------------------------------------------------- the cases
def c_missing_dir(e: Env):
    return cli("info", e.tmp / "no-such-run")


def c_empty_dir(e: Env):
    return cli("info", e.tmp)


def c_no_weights(e: Env):
    (e.run / "model.safetensors").unlink()
    return cli("info", e.run)


def c_truncated_safetensors(e: Env):
    p = e.run / "model.safetensors"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    return cli("info", e.run)


def c_corrupt_safetensors(e: Env):
    p = e.run / "model.safetensors"
    p.write_bytes(random.Random(1).randbytes(p.stat().st_size))
    return cli("info", e.run)


def c_corrupt_safetensors_header(e: Env):
    p = e.run / "model.safetensors"
    raw = bytearray(p.read_bytes())
    raw[8] = ord("x")  # the JSON header starts at byte 8 with '{'
    p.write_bytes(bytes(raw))
    return cli("info", e.run)


def c_config_disagrees_with_weights(e: Env):
    edit_json(e.run / "config.json", d_model=32, d_head=16)
    return cli("info", e.run)


def c_hostile_config_huge_vocab(e: Env):
    edit_json(e.run / "config.json", d_vocab=10**12)  # refused before any allocation
    return cli("info", e.run)


def c_unknown_config_key(e: Env):
    edit_json(e.run / "config.json", d_ff=64)
    return cli("info", e.run)


def c_config_not_json(e: Env):
    (e.run / "config.json").write_text('{"n_layers": 1,')
    return cli("info", e.run)


def c_config_not_utf8(e: Env):
    (e.run / "config.json").write_bytes(b'{"n_layers": \xff\xfe}')
    return cli("info", e.run)


def c_tokenizer_vocab_disagrees(e: Env):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(e.run / "tokenizer.json"))
    tok.add_tokens([f"<extra_{i}>" for i in range(50)])  # 350 tokens for a d_vocab=300 model
    tok.save(str(e.run / "tokenizer.json"))
    return cli("info", e.run)


def c_tokenizer_corrupt(e: Env):
    (e.run / "tokenizer.json").write_text("{")
    return cli("sample", e.run)


def c_empty_corpus(e: Env):
    return cli("train", "--corpus", e.tmp, *SMALL, "--out", e.tmp / "out")


def c_binary_corpus(e: Env):
    (e.tmp / "a.bin").write_bytes(bytes(range(256)) * 4)
    (e.tmp / "b.dat").write_bytes(b"\xff\xfe\x00\x01" * 64)
    return cli("train", "--corpus", e.tmp, *SMALL, "--out", e.tmp / "out")


def c_token_id_out_of_range(e: Env):
    model = load(e.run)
    return lib(lambda: model(torch.tensor([[1, 2, 300]])))


def c_negative_token_id(e: Env):
    model = load(e.run)
    return lib(lambda: model(torch.tensor([[1, -1]])))


def c_sequence_longer_than_n_ctx(e: Env):
    model = load(e.run)
    return lib(lambda: model(torch.zeros(1, 17, dtype=torch.long)))


def c_negative_d_model(e: Env):
    return cli("train", "--corpus", e.corpus, *SMALL, "--d-model", "-4", "--out", e.tmp / "o")


def c_zero_n_heads(e: Env):
    return cli("train", "--corpus", e.corpus, *SMALL, "--n-heads", "0", "--out", e.tmp / "o")


def c_zero_n_ctx(e: Env):
    return cli("train", "--corpus", e.corpus, *SMALL, "--n-ctx", "0", "--out", e.tmp / "o")


def c_negative_n_layers(e: Env):
    return cli("train", "--corpus", e.corpus, *SMALL, "--n-layers", "-1", "--out", e.tmp / "o")


def c_zero_steps(e: Env):
    return cli("train", "--corpus", e.corpus, *SMALL, "--steps", "0", "--out", e.tmp / "o")


def c_negative_batch_size(e: Env):
    return cli("train", "--corpus", e.corpus, *SMALL, "--batch-size", "-2", "--out", e.tmp / "o")


def c_zero_sample_tokens(e: Env):
    return cli("sample", e.run, "--tokens", "0")


def c_d_model_not_n_heads_times_d_head(e: Env):
    return cli(
        "train",
        "--corpus",
        e.corpus,
        *SMALL,
        "--d-model",
        "10",
        "--n-heads",
        "3",
        "--out",
        e.tmp / "o",
    )


def c_zero_d_head_in_config(e: Env):
    return lib(lambda: ModelConfig.from_json('{"d_model": 16, "n_heads": 2, "d_head": 0}'))


def c_nan_loss(e: Env):
    return cli(
        "train",
        "--corpus",
        e.corpus,
        *SMALL,
        "--steps",
        "5",
        "--warmup",
        "0",
        "--lr",
        "1e30",
        "--ckpt-interval",
        "1",
        "--out",
        e.tmp / "o",
    )


def c_full_disk(e: Env):
    """ENOSPC half-way through writing a checkpoint (a patched safetensors writer)."""
    import safetensors.torch

    def full_disk(tensors, filename, metadata=None):
        data = safetensors.torch.save(tensors, metadata=metadata)
        with open(filename, "wb") as f:
            f.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)

    # qkov.io.atomic_save_safetensors imports save_file when it writes: patch it at its source.
    real, safetensors.torch.save_file = safetensors.torch.save_file, full_disk
    try:
        return cli("train", "--resume", "--steps", "6", "--no-progress", "--out", e.run)
    finally:
        safetensors.torch.save_file = real


def c_resume_without_run(e: Env):
    return cli("train", "--resume", "--no-progress", "--out", e.tmp)


def c_train_into_existing_run(e: Env):
    return cli("train", "--corpus", e.corpus, *SMALL, "--out", e.run)


def c_train_config_unknown_key(e: Env):
    edit_json(e.run / "train_config.json", dropout=0.1)
    return cli("train", "--resume", "--no-progress", "--out", e.run)


def c_bad_device(e: Env):
    return cli("train", "--corpus", e.corpus, *SMALL, "--device", "tpu0", "--out", e.tmp / "o")


def c_missing_gpu(e: Env):
    return cli("train", "--corpus", e.corpus, *SMALL, "--device", "cuda:99", "--out", e.tmp / "o")


def c_seed_too_big(e: Env):
    return cli("sample", e.run, "--seed", str(2**64))


def c_nan_temperature(e: Env):
    return cli("sample", e.run, "--temperature", "nan")


def c_negative_temperature(e: Env):
    return cli("sample", e.run, "--temperature", "-1")


def c_prompt_not_utf8(e: Env):
    return cli("sample", e.run, "--prompt", b"def \xff".decode("utf-8", "surrogateescape"))


def c_sample_without_tokenizer(e: Env):
    (e.run / "tokenizer.json").unlink()
    return cli("sample", e.run)


def c_attribute_without_tokenizer(e: Env):
    (e.run / "tokenizer.json").unlink()
    (e.tmp / "t.txt").write_text("def alpha_1(beta):\n    return 1\n")
    return cli("attribute", e.run, "--text-file", e.tmp / "t.txt")


def c_analyze_second_folder_missing(e: Env):
    # refused before the first folder is analysed (its progress lines would come first)
    return cli("analyze", e.run, e.tmp / "no-such-run", "--out", e.tmp / "out")


def c_analyze_text_through_a_second_folder_without_tokenizer(e: Env):
    shutil.copytree(e.run, e.tmp / "bare")
    (e.tmp / "bare" / "tokenizer.json").unlink()
    (e.tmp / "t.txt").write_text("def alpha_1(beta):\n    return 1\n" * 4)
    return cli(
        "analyze", e.run, e.tmp / "bare", "--text-file", e.tmp / "t.txt", "--out", e.tmp / "o"
    )


def c_pickle_not_pt(e: Env):
    p = e.tmp / "weights.pkl"
    p.write_bytes(b"\x80\x04K\x01.")  # pickle of the int 1
    return lib(lambda: load_pt_weights(p))


def c_malicious_pt(e: Env):
    p = e.tmp / "weights.pt"
    p.write_bytes(malicious_pickle(e.tmp / "PWNED"))
    code, msg = lib(lambda: load_pt_weights(p))
    assert not (e.tmp / "PWNED").exists()
    return code, msg


# (what is wrong, case, words the one line must hold)
CASES: list[tuple[str, Callable[[Env], tuple[int, str]], str]] = [
    ("missing directory", c_missing_dir, "does not exist"),
    ("empty directory", c_empty_dir, "has no config.json"),
    ("directory without model.safetensors", c_no_weights, "model.safetensors does not exist"),
    ("truncated model.safetensors", c_truncated_safetensors, "truncated or corrupt"),
    ("random bytes in model.safetensors", c_corrupt_safetensors, "truncated or corrupt"),
    ("corrupt safetensors header", c_corrupt_safetensors_header, "truncated or corrupt"),
    (
        "config.json disagrees with the weights' shapes",
        c_config_disagrees_with_weights,
        "does config.json match the weights",
    ),
    (
        "config.json asks for d_vocab=10**12 (hostile)",
        c_hostile_config_huge_vocab,
        "does config.json match the weights",
    ),
    ("unknown config key", c_unknown_config_key, "unknown keys ['d_ff']"),
    ("config.json is not JSON", c_config_not_json, "is not valid JSON"),
    ("config.json is not UTF-8", c_config_not_utf8, "cannot be read as UTF-8 JSON"),
    (
        "tokenizer vocab size disagrees with the model",
        c_tokenizer_vocab_disagrees,
        "has 350 tokens but the model has d_vocab=300",
    ),
    ("corrupt tokenizer.json", c_tokenizer_corrupt, "is not a valid tokenizer.json"),
    ("empty corpus", c_empty_corpus, "has no text"),
    ("corpus of only binary files", c_binary_corpus, "only binary or non-UTF-8 files"),
    ("token id out of range", c_token_id_out_of_range, "token id 300 is out of range"),
    ("negative token id", c_negative_token_id, "token id -1 is out of range"),
    ("sequence longer than n_ctx", c_sequence_longer_than_n_ctx, "longer than n_ctx=16"),
    ("negative size: --d-model -4", c_negative_d_model, "d_model must be positive"),
    ("zero size: --n-heads 0", c_zero_n_heads, "n_heads must be positive"),
    ("zero size: --n-ctx 0", c_zero_n_ctx, "n_ctx must be positive"),
    ("negative size: --n-layers -1", c_negative_n_layers, "n_layers must be >= 0"),
    ("zero size: --steps 0", c_zero_steps, "--steps must be a positive integer"),
    (
        "negative size: --batch-size -2",
        c_negative_batch_size,
        "--batch-size must be a positive integer",
    ),
    ("zero size: sample --tokens 0", c_zero_sample_tokens, "(--tokens) must be positive"),
    ("zero size: d_head 0 in config.json", c_zero_d_head_in_config, "d_head must be positive"),
    (
        "d_model != n_heads * d_head (--d-model 10 --n-heads 3)",
        c_d_model_not_n_heads_times_d_head,
        "not divisible by n_heads=3",
    ),
    ("NaN loss (--lr 1e30)", c_nan_loss, "loss became nan at step 1"),
    ("full disk while saving a checkpoint", c_full_disk, "No space left on device"),
    ("--resume with no run in --out", c_resume_without_run, "cannot resume"),
    (
        "train into a directory holding a run",
        c_train_into_existing_run,
        "already holds a training run",
    ),
    ("unknown key in train_config.json", c_train_config_unknown_key, "is not a qkov TrainConfig"),
    ("unknown --device", c_bad_device, "is not a device"),
    ("--device cuda:99 (no such GPU)", c_missing_gpu, "--device cuda:99"),
    ("seed beyond 64 bits", c_seed_too_big, "--seed must be an integer in [0, 2**63)"),
    ("--temperature nan", c_nan_temperature, "--temperature must be a finite number >= 0"),
    (
        "--temperature -1 (was silently greedy)",
        c_negative_temperature,
        "--temperature must be a finite number >= 0 (0: greedy), got -1.0",
    ),
    ("--prompt with bytes that are not UTF-8", c_prompt_not_utf8, "not valid UTF-8"),
    (
        "qkov sample on a folder without tokenizer.json",
        c_sample_without_tokenizer,
        "has no tokenizer.json, so --prompt cannot be encoded: copy the model's own",
    ),
    (
        "qkov attribute on a folder without tokenizer.json",
        c_attribute_without_tokenizer,
        "has no tokenizer.json, so --text-file cannot be encoded: copy the model's own",
    ),
    (
        "qkov analyze: the second folder does not exist",
        c_analyze_second_folder_missing,
        "no-such-run does not exist",
    ),
    (
        "qkov analyze --text-file: the second folder has no tokenizer.json",
        c_analyze_text_through_a_second_folder_without_tokenizer,
        "bare has no tokenizer.json, so the text cannot be encoded",
    ),
    ("weights as a non-.pt pickle (.pkl)", c_pickle_not_pt, "qkov never unpickles"),
    (
        "malicious .pt (pickle that runs code)",
        c_malicious_pt,
        "refused by torch.load(weights_only=True)",
    ),
]


class _WriteMarker:
    """Unpickling this calls exec(), which would create the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        code = f"open({str(self.marker)!r}, 'w').write('pwned')"
        return (exec, (code,))


def malicious_pickle(marker: Path) -> bytes:
    import pickle

    return pickle.dumps({"W_E": _WriteMarker(marker)}, protocol=2)


def make_env(corpus: Path, run: Path, scratch: Path) -> Env:
    """A fresh copy of `run` and an empty folder under `scratch` for one case."""
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    shutil.copytree(run, scratch / "run")
    (scratch / "tmp").mkdir()
    return Env(corpus=corpus, run=scratch / "run", tmp=scratch / "tmp")


# ---------------------------------------------------------------- the tests
@pytest.fixture(scope="module")
def base(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("bad-inputs")
    corpus = write_corpus(root / "corpus")
    return corpus, train_tiny_run(corpus, root / "run")


@pytest.mark.parametrize("what, case, words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_one_clear_line(what, case, words, base, tmp_path):
    env = make_env(*base, tmp_path / "case")
    before = {
        p.name: p.read_bytes()
        for p in env.run.iterdir()
        if p.name in ("model.safetensors", "train_state.safetensors")
    }
    code, err = case(env)
    assert code == 2, (what, code, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, (what, err)
    assert words in lines[0], (what, err)
    assert "Traceback" not in err
    # Nothing already written is lost: the run's checkpoint is untouched, unless this case
    # damaged it on purpose.
    for name, data in before.items():
        if (env.run / name).is_file() and case not in (
            c_truncated_safetensors,
            c_corrupt_safetensors,
            c_corrupt_safetensors_header,
        ):
            assert (env.run / name).read_bytes() == data, (what, name)


def test_full_disk_keeps_previous_checkpoint_and_resume_finishes(base, tmp_path):
    env = make_env(*base, tmp_path / "case")
    before = {
        n: (env.run / n).read_bytes() for n in ("model.safetensors", "train_state.safetensors")
    }
    code, err = c_full_disk(env)
    assert code == 2 and "is the disk full?" in err and "step 6 checkpoint" in err, err
    for name, data in before.items():
        assert (env.run / name).read_bytes() == data, name  # the previous checkpoint survives
    assert not [p for p in env.run.iterdir() if p.name.endswith(".tmp")]  # no half files left
    load(env.run)
    # Space freed: --resume continues from the step-4 checkpoint to the end.
    code, err = cli("train", "--resume", "--steps", "6", "--no-progress", "--out", env.run)
    assert code == 0, err
    steps = [json.loads(x)["step"] for x in (env.run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6]


def test_nan_loss_writes_no_checkpoint_of_bad_weights(base, tmp_path):
    """The step-1 weights of an --lr 1e30 run give a NaN loss: they are never saved."""
    env = make_env(*base, tmp_path / "case")
    code, err = c_nan_loss(env)
    assert code == 2 and "at step 1" in err
    out = env.tmp / "o"
    assert not (out / "model.safetensors").exists()
    assert not (out / "train_state.safetensors").exists()


def test_malicious_pickle_never_runs(tmp_path):
    """Legacy and zip .pt formats, and a nested state_dict: refused, marker never written."""
    marker = tmp_path / "PWNED"
    legacy = tmp_path / "legacy.pth"
    legacy.write_bytes(malicious_pickle(marker))
    zipped = tmp_path / "zipped.pt"
    torch.save({"state_dict": {"W_E": _WriteMarker(marker)}}, zipped)
    for path in (legacy, zipped):
        with pytest.raises(QkovError, match=r"refused by torch.load\(weights_only=True\)"):
            load_pt_weights(path)
        assert not marker.exists()
    # The same bytes really are hostile: a plain pickle load runs the payload.
    import pickle

    pickle.loads(legacy.read_bytes())
    assert marker.read_text() == "pwned"


def test_pt_weights_round_trip_and_refusals(tmp_path):
    w = {"W_E": torch.randn(5, 4), "W_U": torch.randn(4, 5)}
    torch.save(w, tmp_path / "w.pt")
    got = load_pt_weights(tmp_path / "w.pt")
    assert set(got) == set(w) and all(torch.equal(got[k], w[k]) for k in w)
    torch.save({"state_dict": w, "epoch": 3}, tmp_path / "nested.pth")
    assert set(load_pt_weights(tmp_path / "nested.pth")) == set(w)
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(QkovError, match="flat dict of named tensors"):
        load_pt_weights(tmp_path / "list.pt")
    for name in ("w.bin", "w.ckpt", "w.pkl"):
        (tmp_path / name).write_bytes((tmp_path / "w.pt").read_bytes())
        with pytest.raises(QkovError, match="never unpickles"):
            load_pt_weights(tmp_path / name)
    (tmp_path / "torn.pt").write_bytes((tmp_path / "w.pt").read_bytes()[:100])
    with pytest.raises(QkovError, match="refused by torch.load"):
        load_pt_weights(tmp_path / "torn.pt")


def test_torn_or_odd_metrics_lines_are_dropped_on_resume(base, tmp_path):
    env = make_env(*base, tmp_path / "case")
    metrics = env.run / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + 'null\n["step"]\n{"step": "4"}\n{"step": 4, "tr')
    code, err = cli("train", "--resume", "--steps", "6", "--no-progress", "--out", env.run)
    assert code == 0, err
    steps = [json.loads(x)["step"] for x in metrics.read_text().splitlines()]
    assert steps == [2, 4, 6]


def test_resume_without_steps_keeps_the_run_schedule(base, tmp_path):
    """`--resume` alone (as the interrupt message says) must not stretch a 4-step run to the
    1500-step default."""
    env = make_env(*base, tmp_path / "case")
    code, err = cli("train", "--resume", "--no-progress", "--out", env.run)
    assert code == 0, err
    assert json.loads((env.run / "train_config.json").read_text())["steps"] == 4


# ---------------------------------------------------------------- unwritable outputs
def _writers(e: Env) -> dict[str, Callable[[Path], list]]:
    """Each command that writes, as argv with its output at a given path."""
    analysis = e.tmp.parent / "analysis.json"
    analysis.write_text("{}")  # `report` must refuse its --out before reading this
    return {
        "train --out": lambda p: ["train", "--corpus", e.corpus, *SMALL, "--out", p],
        "analyze --out": lambda p: ["analyze", e.run, "--out", p],
        "demo --out": lambda p: ["demo", "--out", p],
        "heads --json": lambda p: ["heads", e.run, "--json", p],
        "circuits --json": lambda p: ["circuits", e.run, "--json", p],
        "report --out": lambda p: ["report", analysis, "--out", p],
    }


WRITERS = ["train --out", "analyze --out", "demo --out", "heads --json", "circuits --json"]
WRITERS += ["report --out"]
# Where the output cannot go: a read-only place, a path under a regular file, and the
# wrong kind of thing already there (a file for a folder --out, a folder for a --json file).
SHAPES = {
    "/proc/x": lambda tmp, is_file: Path("/proc/x"),
    "under a file": lambda tmp, is_file: tmp / "a-file" / "out",
    "wrong kind in the way": lambda tmp, is_file: tmp / ("a-folder" if is_file else "a-file"),
}


def tree(*roots: Path) -> dict[str, bytes | None]:
    """Every path under `roots` with its bytes (None for a folder)."""
    return {
        str(p): None if p.is_dir() else p.read_bytes()
        for root in roots
        for p in sorted([root, *root.rglob("*")])
    }


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("writer", WRITERS)
def test_unwritable_output_is_refused_before_any_work(writer, shape, base, tmp_path):
    """Exit 2, one line naming the output path, nothing written and nothing lost."""
    env = make_env(*base, tmp_path / "case")
    (env.tmp / "a-file").write_text("keep me\n")
    (env.tmp / "a-folder").mkdir()
    (env.tmp / "a-folder" / "kept.txt").write_text("keep me too\n")
    target = SHAPES[shape](env.tmp, writer.endswith("--json"))
    argv = _writers(env)[writer](target)
    before = tree(env.tmp, env.run)
    code, err = cli(*argv)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, (writer, shape, code, err)
    assert str(target) in lines[0] and "Traceback" not in err, (writer, shape, err)
    assert tree(env.tmp, env.run) == before, (writer, shape)  # nothing written, nothing lost


@pytest.mark.parametrize("name", ["analyze", "heads", "attribute"])
def test_the_text_flags_mean_the_same_in_every_command(base, tmp_path, name):
    """`--text-file empty.txt` must not silently fall back to a built-in snippet; `--text`
    is the text itself in every command that reads a text (a blank one is refused), and a
    `--text` naming a file is refused rather than read as its name's few characters (it was
    another name of --text-file in `qkov heads`); never both flags. One line, exit 2,
    nothing written."""
    env = make_env(*base, tmp_path / "case")
    empty, notes = env.tmp / "empty.txt", env.tmp / "notes.txt"
    empty.write_text("")
    notes.write_text("def f(x):\n    return x\n")
    out = {"heads": ["--json", env.tmp / "o" / "h.json"], "analyze": ["--out", env.tmp / "o"]}
    refusals = {
        ("--text-file", empty): [str(empty), "--text-file", "is empty"],
        ("--text", " \n"): ["--text is empty"],
        ("--text", notes): [f"{str(notes)!r} is a file", f"give --text-file {notes}"],
    }
    for (flag, value), words in refusals.items():
        code, err = cli(name, env.run, *out.get(name, []), flag, value)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1, (flag, value, code, err)
        assert all(w in lines[0] for w in words), (words, lines)
        assert not (env.tmp / "o").exists()
    code, err = cli(name, env.run, "--text", "x", "--text-file", notes, *out.get(name, []))
    assert code == 2 and "not allowed with argument" in err


def test_qkov_heads_reads_the_text_from_the_command_line_as_from_a_file(base, tmp_path):
    """`qkov heads --text "..."` scores the heads and evaluates on the same text as
    `--text-file` holding it (the same JSON but for the text's name)."""
    env = make_env(*base, tmp_path / "case")
    text = "def f(x):\n    return x + 1\n" * 6
    (env.tmp / "t.py").write_text(text)
    a, b = env.tmp / "a.json", env.tmp / "b.json"
    assert cli("heads", env.run, "--text-file", env.tmp / "t.py", "--json", a)[0] == 0
    assert cli("heads", env.run, "--text", text, "--json", b)[0] == 0
    from_file, inline = json.loads(a.read_text()), json.loads(b.read_text())
    assert from_file["evaluation"]["description"].startswith(str(env.tmp / "t.py"))
    assert inline["evaluation"]["description"].startswith("the text given with --text")
    for d in (from_file, inline):
        d["evaluation"].pop("description")
    assert inline == from_file and inline["text_scores"]
