"""Property-based fuzzing (hypothesis): config parsing, CLI arguments, mutated checkpoints.

The property everywhere: a clean QkovError (one line from the CLI, exit status 2), an
argparse usage error (SystemExit 2), or a correct result; never another exception.
`pytest tests/test_fuzz.py --hypothesis-show-statistics` prints the example counts."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from qkov import ModelConfig, QkovError, load
from qkov.cli import main
from qkov.config import POSITIONAL_MODES
from tiny import tiny_train

FIELDS = [f.name for f in dataclasses.fields(ModelConfig)]
FUZZ = dict(
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# ---------------------------------------------------------------- shared inputs
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(-3, 70)
    | st.floats()
    | st.text(max_size=6)
)
json_values = st.recursive(
    json_scalars,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3),
    max_leaves=6,
)
field_values = (
    st.integers(-2, 70)
    | st.sampled_from(POSITIONAL_MODES)
    | st.none()
    | st.floats(-1, 1)
    | json_values
)
near_valid = st.fixed_dictionaries(
    {},
    optional={
        "n_layers": st.integers(-1, 4),
        "n_heads": st.integers(-1, 4),
        "d_model": st.sampled_from([0, 4, 6, 8, 12, 16, -8]),
        "d_head": st.none() | st.integers(-1, 8),
        "n_ctx": st.integers(-1, 32),
        "d_vocab": st.integers(-1, 500),
        "positional": st.sampled_from([*POSITIONAL_MODES, "rotary"]),
        "seed": st.integers(-1, 2**64),
        "init_std": st.floats() | st.integers(-1, 10**400),
    },
)
config_dicts = near_valid | st.dictionaries(
    st.sampled_from(FIELDS) | st.text(max_size=8), field_values, max_size=len(FIELDS) + 2
)


@pytest.fixture(scope="module")
def dirs(tiny_corpus, tmp_path_factory) -> dict[str, Path]:
    """A tiny trained run (never modified), an empty dir, a binary-only corpus."""
    root = tmp_path_factory.mktemp("fuzz")
    run = root / "run"
    args = tiny_train(
        tiny_corpus, run, d_model=8, n_ctx=8, steps=4, eval_interval=2, ckpt_interval=2
    )
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(args) == 0
    (root / "empty").mkdir()
    (root / "cwd").mkdir()  # the CLI fuzz runs here, so stray outputs stay in tmp
    (root / "binary").mkdir()
    (root / "binary" / "x.bin").write_bytes(bytes(range(256)))
    shutil.copytree(run, root / "resumable")  # `train --resume` may rewrite its files
    return {
        "run": run,
        "empty": root / "empty",
        "binary": root / "binary",
        "resumable": root / "resumable",
        "corpus": tiny_corpus,
        "root": root,
    }


@contextlib.contextmanager
def _chdir(path: Path) -> Iterator[None]:
    """contextlib.chdir, which needs Python 3.11 (qkov supports 3.10)."""
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def run_cli(argv: list[str], cwd: Path) -> tuple[int, str, str]:
    """qkov ARGV in-process in `cwd`: (exit status, stdout, stderr); only a clean exit gets
    through."""
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out), _chdir(cwd):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse: --help/--version (0) or a usage error (2)
            code = e.code
    return code, out.getvalue(), err.getvalue()


# `qkov CMD: error: what is wrong` (a QkovError), or argparse's last line `qkov[ CMD]: error:`
ERROR_LINE = re.compile(r"qkov( [a-z]+)?: error: \S.*")


def assert_clean(code: int, out: str, err: str, argv: list[str]) -> None:
    """Exit 0 with no error, or exit 2 with exactly one error line: a QkovError alone on
    stderr, or argparse's usage of the command followed by its one error line. Never a
    traceback, never another status."""
    assert code in (0, 2), (argv, code, err)
    assert "Traceback" not in err, (argv, err)
    lines = err.strip().splitlines()
    errors = [ln for ln in lines if ": error: " in ln]
    if code == 0:
        event("exit 0")
        assert not errors, (argv, err)
        return
    if err.startswith("usage: qkov"):
        event("exit 2 (argparse)")
        assert len(errors) == 1 and ERROR_LINE.fullmatch(lines[-1]), (argv, err)
        return
    if not err:  # `qkov` with no command: its help, on stdout
        event("exit 2 (no command)")
        assert out.startswith("usage: qkov [-h]"), (argv, out)
        return
    event("exit 2 (QkovError)")
    assert len(lines) == 1 and ERROR_LINE.fullmatch(lines[0]), (argv, err)
    assert lines[0].startswith(f"qkov {argv[0]}: error: "), (argv, err)


# ---------------------------------------------------------------- config parsing
@settings(max_examples=400, **FUZZ)
@given(config_dicts)
def test_fuzz_config_dict(data):
    try:
        cfg = ModelConfig.from_dict(data)
    except QkovError:
        event("QkovError")
        return
    event("ModelConfig")
    assert ModelConfig.from_json(cfg.to_json()) == cfg  # what parses, round-trips
    assert cfg.d_head > 0 and cfg.d_model > 0 and cfg.n_heads > 0 and cfg.n_layers >= 0


@settings(max_examples=300, **FUZZ)
@given(
    st.one_of(
        config_dicts.map(lambda d: json.dumps(d)),  # JSON with NaN/Infinity literals too
        json_values.map(json.dumps),
        st.text(max_size=80),
        st.binary(max_size=80).map(lambda b: b.decode("utf-8", "replace")),
        st.integers(1000, 6000).map(lambda n: '{"d_model": ' + "9" * n + "}"),
    )
)
def test_fuzz_config_json(text):
    try:
        cfg = ModelConfig.from_json(text)
    except QkovError:
        event("QkovError")
        return
    event("ModelConfig")
    assert ModelConfig.from_json(cfg.to_json()) == cfg  # what parses, round-trips
    data = json.loads(text)  # and holds what the text said, defaults for the rest
    assert isinstance(data, dict), text
    assert all(getattr(cfg, k) == v for k, v in data.items() if v is not None), (data, cfg)


# ---------------------------------------------------------------- CLI arguments
def _path(dirs, name: str) -> str:
    return {"missing": str(dirs["root"] / "missing")}.get(name) or str(dirs[name])


junk = st.sampled_from(
    [
        "",
        "-",
        "--",
        "x",
        "-1",
        "0",
        "1e3",
        "nan",
        "inf",
        "-inf",
        "1.5",
        "\udcff",
        "é",
        "--no-such-flag",
        "-z",
        "=",
        "2" * 30,
    ]
)
small_ints = st.integers(-3, 6).map(str)
floats = st.sampled_from(["0", "-1", "1e-300", "1e300", "nan", "inf", "0.7", "2"])
text = st.text(max_size=12) | junk


def mostly(good: st.SearchStrategy) -> st.SearchStrategy:
    """`good` five times in six, else junk."""
    return st.integers(0, 5).flatmap(lambda i: junk if i == 0 else good)


trailing_junk = st.integers(0, 7).flatmap(
    lambda i: st.lists(junk, min_size=1, max_size=2) if i == 0 else st.just([])
)


@st.composite
def info_sample_argv(draw, dirs):
    cmd = draw(st.sampled_from(["info", "sample"]))
    where = draw(st.sampled_from(["run", "run", "run", "missing", "empty", "corpus"]))
    argv = [cmd, _path(dirs, where)]
    if cmd == "sample":
        for flag, values in [
            ("--prompt", text),
            ("--tokens", mostly(small_ints)),
            ("--temperature", mostly(floats)),
            ("--seed", mostly(small_ints | st.just(str(2**70)))),
        ]:
            if draw(st.booleans()):
                argv += [flag, draw(values)]
    return argv + draw(trailing_junk)


@st.composite
def train_argv(draw, dirs):
    """train with tiny sizes and 1-2 steps, or flag values that fail validation."""
    argv = [
        "train",
        "--no-progress",
        "--corpus",
        _path(dirs, draw(st.sampled_from(["corpus"] * 5 + ["missing", "empty", "binary"]))),
        "--steps",
        draw(st.sampled_from(["1", "2"] * 6 + ["0", "-1", "x"])),
        "--batch-size",
        draw(st.sampled_from(["1", "2"] * 4 + ["0", "-4"])),
        "--vocab-size",
        draw(st.sampled_from(["300"] * 8 + ["256", "0", "-1"])),
    ]
    sizes = {
        "--n-layers": ["0", "1", "2", "-1"],
        "--n-heads": ["1", "2", "3", "0", "-2"],
        "--d-model": ["4", "6", "8", "0", "-8", "10"],
        "--d-head": ["2", "4", "0", "-1"],
        "--n-ctx": ["4", "8", "0", "-3"],
        "--positional": ["shortformer", "standard", "none"],
        "--lr": ["1e-3", "0", "-1", "nan", "inf", "1e30"],
        "--grad-clip": ["1", "0", "nan"],
        "--weight-decay": ["0", "0.1", "-1", "nan"],
        "--warmup": ["0", "1", "-1"],
        "--eval-interval": ["1", "0"],
        "--ckpt-interval": ["1", "0", "-2"],
        "--seed": ["0", "3", "-1", str(2**64)],
        "--device": ["cpu", "nope", "cuda:99", ""],
        "--probe-interval": ["0", "-1"],
    }
    for flag in draw(st.lists(st.sampled_from(sorted(sizes)), max_size=6, unique=True)):
        argv += [flag, draw(st.sampled_from(sizes[flag]))]
    if draw(st.booleans()):
        argv += ["--resume", "--out", str(dirs["resumable"])]
    else:
        argv += ["--out", tempfile.mkdtemp(dir=dirs["root"], prefix="out-")]
    return argv + draw(trailing_junk)


flags = st.sampled_from(
    [
        "--help",
        "-h",
        "--version",
        "--prompt",
        "--tokens",
        "--temperature",
        "--seed",
        "--out",
        "--resume",
        "--steps",
        "--d-model",
    ]
)


@settings(max_examples=120, **FUZZ)
@given(st.data())
def test_fuzz_cli_info_and_sample(dirs, data):
    argv = data.draw(info_sample_argv(dirs))
    assert_clean(*run_cli(argv, dirs["root"] / "cwd"), argv)


@settings(max_examples=80, **FUZZ)
@given(st.data())
def test_fuzz_cli_train(dirs, data):
    argv = data.draw(train_argv(dirs))
    assert_clean(*run_cli(argv, dirs["root"] / "cwd"), argv)


@pytest.mark.slow
@settings(max_examples=150, **FUZZ)
@given(
    st.lists(flags | junk | text, max_size=6),
    st.sampled_from(["info", "sample", "--version", "-h", "nope", "", "heads", "analyze"]),
)
def test_fuzz_cli_random_argv(dirs, args, first):
    # heads/analyze get no valid directory here, so they stop at argparse or at load().
    argv = [first, *args]
    assert_clean(*run_cli(argv, dirs["root"] / "cwd"), argv)


# ---------------------------------------------------------------- mutated checkpoints
@st.composite
def byte_mutation(draw, size: int, header: int):
    """A function bytes -> bytes: bit flips (often in the header), truncation, random
    bytes, an overwritten or inserted slice."""
    kind = draw(st.sampled_from(["flip", "truncate", "random", "overwrite", "insert"]))
    if kind == "flip":
        where = st.integers(0, header - 1) | st.integers(0, size - 1)
        flips = draw(st.lists(st.tuples(where, st.integers(0, 7)), min_size=1, max_size=4))

        def f(b: bytes) -> bytes:
            a = bytearray(b)
            for pos, bit in flips:
                a[pos % len(a)] ^= 1 << bit
            return bytes(a)

        return kind, f
    if kind == "truncate":
        n = draw(st.integers(0, size - 1))
        return kind, lambda b: b[:n]
    if kind == "random":
        junk_bytes = draw(st.binary(max_size=200))
        return kind, lambda b: junk_bytes
    pos = draw(st.integers(0, header - 1) | st.integers(0, size - 1))
    chunk = draw(st.binary(min_size=1, max_size=16))
    if kind == "overwrite":
        return kind, lambda b: b[:pos] + chunk + b[pos + len(chunk) :]
    return kind, lambda b: b[:pos] + chunk + b[pos:]


def check_load(run: Path) -> str:
    """load() must raise QkovError or return exactly what the files hold."""
    try:
        model = load(run)
    except QkovError:
        return "QkovError"
    cfg = ModelConfig.from_json((run / "config.json").read_text(encoding="utf-8"))
    assert model.cfg == cfg
    stored = load_file(str(run / "model.safetensors"))
    for name, value in model.weights().items():
        if name == "W_pos" and cfg.positional == "none":
            assert not value.any()
            continue
        torch.testing.assert_close(
            value, stored[name].to(value.dtype), rtol=0, atol=0, equal_nan=True, msg=name
        )
    model(torch.arange(min(cfg.n_ctx, cfg.d_vocab))[None])  # runs (maybe to NaN)
    return "loaded"


def mutated_copy(dirs, name: str, mutate) -> tuple[tempfile.TemporaryDirectory, Path]:
    tmp = tempfile.TemporaryDirectory(dir=dirs["root"])
    run = Path(tmp.name) / "run"
    shutil.copytree(dirs["run"], run)
    p = run / name
    p.write_bytes(mutate(p.read_bytes()))
    return tmp, run


@pytest.mark.slow
@settings(max_examples=200, **FUZZ)
@given(st.data())
def test_fuzz_mutated_safetensors(dirs, data):
    raw = (dirs["run"] / "model.safetensors").read_bytes()
    header = 8 + int.from_bytes(raw[:8], "little")
    kind, mutate = data.draw(byte_mutation(len(raw), header))
    tmp, run = mutated_copy(dirs, "model.safetensors", mutate)
    with tmp:
        event(f"safetensors {kind} -> {check_load(run)}")


@st.composite
def config_mutation(draw):
    kind = draw(st.sampled_from(["set", "delete", "bytes"]))
    if kind == "bytes":
        return kind, draw(byte_mutation(150, 150))[1]
    key = draw(st.sampled_from(FIELDS) | st.text(max_size=6))
    value = draw(field_values)

    def f(b: bytes) -> bytes:
        d = json.loads(b)
        if kind == "delete":
            d.pop(key, None)
        else:
            d[key] = value
        return json.dumps(d).encode()

    return kind, f


@settings(max_examples=150, **FUZZ)
@given(config_mutation())
def test_fuzz_mutated_config_json(dirs, mutation):
    kind, mutate = mutation
    tmp, run = mutated_copy(dirs, "config.json", mutate)
    with tmp:
        event(f"config.json {kind} -> {check_load(run)}")


@settings(max_examples=40, **FUZZ)
@given(st.data())
def test_fuzz_mutated_tokenizer_json(dirs, data):
    size = (dirs["run"] / "tokenizer.json").stat().st_size
    kind, mutate = data.draw(byte_mutation(size, size))
    tmp, run = mutated_copy(dirs, "tokenizer.json", mutate)
    with tmp:
        event(f"tokenizer.json {kind} -> {check_load(run)}")
