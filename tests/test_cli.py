"""The CLI as a user meets it: commands that work, and one clear line for mistakes."""

import json
import os
import re
import subprocess
import sys

import pytest

import qkov
from qkov import shipped
from qkov.cli import COMMANDS, HelpFormatter, build_parser, main
from qkov.report.escape import esc
from tiny import tiny_train


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qkov", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def run_dir(tiny_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "r"
    code = main(tiny_train(tiny_corpus, out, steps=6, eval_interval=3, ckpt_interval=3))
    assert code == 0
    return out


def test_train_info_sample(run_dir, capsys):
    assert json.loads((run_dir / "config.json").read_text())["d_vocab"] == 300
    assert main(["info", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "{" not in out  # key  value rows, not a raw JSON line
    blocks = [[]]  # the config rows, then the last metrics record's rows
    for line in out.splitlines()[1:]:
        if line.startswith("  "):
            blocks[-1].append(line)
        else:
            blocks.append([])
    assert len(blocks) == 2 and all(blocks), out
    for rows in blocks:  # each block's values start in one column
        assert len({re.match(r"  \S+\s+", r).end() for r in rows}) == 1, rows
    rows = dict(r.split(None, 1) for r in blocks[0] + blocks[1])
    assert rows["n_layers"] == "1" and rows["params"][0].isdigit()
    assert rows["tokenizer"] == "300 tokens" and rows["step"] == "6"
    assert rows["weights"] == "of step 6"  # model.safetensors' own record, as the metrics'
    assert "the weights are of step" not in out
    assert rows["tokens"].endswith(("k", "M")) or rows["tokens"].isdigit()
    assert re.fullmatch(r"\d\.\d\de-\d\d", rows["lr"]), rows["lr"]
    assert re.fullmatch(r"\d+\.\d% of the measured matmul peak", rows["mfu"]), rows["mfu"]
    # the fields that act on this attention-only shortformer model, no others (acting_fields)
    assert rows["positional"] == "shortformer" and "pos_init_std" in rows
    assert not {"rotary_base", "rotary_dim", "act_fn", "gated_mlp", "n_kv_heads"} & set(rows)
    assert main(["sample", str(run_dir), "--prompt", "def ", "--tokens", "5"]) == 0
    assert capsys.readouterr().out.startswith("def ")


def test_resume_extends_steps(run_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    assert (
        main(
            [
                "train",
                "--resume",
                "--steps",
                "9",
                "--out",
                str(copy),
                "--no-progress",
                "--corpus",
                json.loads((run_dir / "train_config.json").read_text())["corpus"],
            ]
        )
        == 0
    )
    last = (copy / "metrics.jsonl").read_text().splitlines()[-1]
    assert json.loads(last)["step"] == 9


def test_fine_tune_with_init_from(run_dir, tiny_corpus, tmp_path, capsys):
    """`qkov train --init-from RUN`: the config comes from RUN (model flags are not needed),
    the record says where the weights came from, and `qkov info` shows it."""
    out = tmp_path / "tuned"
    argv = ["train", "--init-from", str(run_dir), "--corpus", str(tiny_corpus), "--steps", "3"]
    argv += ["--batch-size", "2", "--lr", "1e-3", "--min-lr-ratio", "1", "--no-progress"]
    assert main([*argv, "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text()) == json.loads(
        (run_dir / "config.json").read_text()
    )
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["init_from"] == str(run_dir) and saved["min_lr_ratio"] == 1.0
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    assert re.search(rf"\n  init_from +{re.escape(str(run_dir))} ", capsys.readouterr().out)


@pytest.mark.parametrize(
    "args, words",
    [
        (["info", "/nonexistent/run"], "does not exist"),
        (["train", "--out", "x", "--d-model", "-4"], "d_model must be positive"),
        (["train", "--out", "x", "--corpus", "/nonexistent/txt"], "is not a file, folder or glob"),
        (["sample", "/nonexistent/run"], "does not exist"),
        (["train", "--out", "x", "--init-from", "/nonexistent/run"], "does not exist"),
        (["train", "--out", "x", "--min-lr-ratio", "2"], "--min-lr-ratio must be in [0, 1]"),
        (["sample", str(shipped("attn0")), "--temperature", "-1"], "--temperature must be a"),
        (["sample", str(shipped("attn0")), "--tokens", "0"], "(--tokens) must be positive"),
        (["sample", str(shipped("attn0")), "--prompt", ""], "encodes to no tokens"),
    ],
)
def test_user_mistakes_get_one_line(args, words, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "qkov", *args], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_help_lists_commands():
    proc = run_cli("--help")
    assert proc.returncode == 0
    for cmd in ("train", "sample", "info"):
        assert cmd in proc.stdout


def test_cli_parser_imports_no_torch():
    """`qkov --help` must not pay for importing torch: every cli module imports it (and
    anything that imports it) inside its run function."""
    code = "import qkov.cli, sys; qkov.cli.build_parser(); print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.stdout.strip() != "False":  # name the culprits: cli modules whose import or
        # register() pulls torch in
        code = (
            "import argparse, importlib, sys; from qkov.cli import CommandParser; "
            "sub = argparse.ArgumentParser().add_subparsers(parser_class=CommandParser); "
            "importlib.import_module('qkov.cli.' + sys.argv[1]).register(sub); "
            "print('torch' in sys.modules)"
        )
        culprits = [
            name
            for name in COMMANDS
            if subprocess.run(
                [sys.executable, "-c", code, name], capture_output=True, text=True
            ).stdout.strip()
            != "False"
        ]
        pytest.fail(f"importing the parser imports torch (cli modules: {culprits}) {proc.stderr}")


@pytest.mark.parametrize("command", COMMANDS)
def test_subcommand_help_shows_every_default(command):
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    text = " ".join(sub.format_help().split())  # unwrapped
    for action in sub._actions:
        if not HelpFormatter._shows_default(action) or "default" in (action.help or ""):
            continue
        value = repr(action.default) if isinstance(action.default, str) else action.default
        assert f"default: {value}" in text, (command, action.dest, text)


@pytest.mark.parametrize("command", COMMANDS)
def test_subcommand_mistake_prints_that_subcommands_usage(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "X", "--foo"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: qkov {command} "), err
    errors = [ln for ln in err.splitlines() if ": error: " in ln]
    assert errors == [err.splitlines()[-1]] and errors[0].startswith(f"qkov {command}: error:")


@pytest.mark.slow
def test_sample_streams_and_stops_quietly_when_the_reader_goes():
    """--tokens 100000 prints its text as it comes (not after minutes), and a reader that
    stops reading (`| head`) ends it with status 141, no traceback."""
    argv = [sys.executable, "-m", "qkov", "sample", str(shipped("attn2")), "--tokens", "100000"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        got = b""
        while len(got) < 40:  # the prompt and a few generated tokens
            chunk = proc.stdout.read1(4096)
            assert chunk, proc.stderr.read().decode()
            got += chunk
        assert got.startswith(b"def ")
        proc.stdout.close()
        assert proc.wait(timeout=120) == 141
        assert b"Traceback" not in proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()


def test_circuits_says_when_no_factoring_bug_is_found(run_dir, capsys):
    """One skip-trigram per head cannot pair into a factoring bug: the command says so,
    with the count in the right grammatical number."""
    assert main(["circuits", str(run_dir), "-k", "1", "--bugs", "3"]) == 0
    out = capsys.readouterr().out
    assert "top 1 skip-trigram:" in out and "top 1 skip-trigrams" not in out
    assert out.count("no factoring bug") == 2  # one per head of the 1-layer, 2-head model
    assert main(["circuits", str(run_dir), "-k", "1", "--bugs", "0"]) == 0
    assert "no factoring bug" not in capsys.readouterr().out  # none asked for


def test_info_says_when_the_weights_are_newer_than_the_last_metrics(run_dir, tmp_path, capsys):
    """A run stopped between two records (SIGTERM after the last one; here the weights of
    step 6 and the last record at step 3): info says whose numbers its last record gives."""
    import shutil

    run = tmp_path / "stopped"
    shutil.copytree(run_dir, run)
    metrics = run / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    kept = [r for r in records if r.get("step", 0) <= 3]
    assert kept and len(kept) < len(records)
    metrics.write_text("".join(json.dumps(r) + "\n" for r in kept))
    assert main(["info", str(run)]) == 0
    out = capsys.readouterr().out
    assert "last record of metrics.jsonl (the weights are of step 6)" in out
    assert "  weights " in out and "of step 6" in out
    assert main(["info", str(run_dir)]) == 0  # the whole run: its last record is its weights'
    out = capsys.readouterr().out
    assert "last record of metrics.jsonl\n" in out and "the weights are of step" not in out


@pytest.mark.parametrize("command", ["info", "heads", "analyze"])
def test_a_run_without_weights_yet_says_whether_they_are_coming(command, run_dir, tmp_path, capsys):
    """A run before its first checkpoint: the process training it and the step its weights
    come at; without that process, that none were kept. One line, exit 2, for every
    command that loads a model."""
    import shutil

    from qkov.runlock import RunLock

    run = tmp_path / "young"
    shutil.copytree(run_dir, run)
    (run / "model.safetensors").unlink()
    (run / "train_state.safetensors").unlink()  # (with it, the weights were lost, not late)
    every = json.loads((run / "train_config.json").read_text())["ckpt_interval"]
    argv = [command, str(run)] + (["--out", str(tmp_path / "o")] if command == "analyze" else [])

    def error() -> str:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        return err[0]

    with RunLock(run) as lock:
        lock.acquire()
        assert (
            f"no model.safetensors yet: process {os.getpid()} is training it and writes its "
            in error()
        )
    assert f"first checkpoint (step {every:,}, --ckpt-interval)" in error()
    assert "its training stopped before its first checkpoint" in error()
    assert not (tmp_path / "o").exists()


def test_info_says_how_a_run_was_trained(run_dir, tmp_path, capsys):
    """The `trained` row: corpus, tokens a step, learning rate and schedule, weight decay,
    and label smoothing where the run used some; none for a model without a train record."""
    import shutil

    run = tmp_path / "r"
    shutil.copytree(run_dir, run)
    tc = json.loads((run / "train_config.json").read_text())
    n_ctx = json.loads((run / "config.json").read_text())["n_ctx"]

    def trained() -> str | None:
        assert main(["info", str(run)]) == 0
        out = capsys.readouterr().out.split("last record")[0]
        rows = dict(line.split(None, 1) for line in out.splitlines()[1:])
        return rows.get("trained")

    given = tc | {"corpus": "stdlib", "batch_size": 3, "lr": 0.002, "warmup": 7}
    (run / "train_config.json").write_text(json.dumps(given | {"min_lr_ratio": 1.0}))
    assert trained() == (
        f"on stdlib, 3 x {n_ctx} tokens a step, lr 2.00e-03 (warmup 7, then constant), "
        f"weight decay {tc['weight_decay']:g}"
    )
    decayed = given | {"min_lr_ratio": 0.1, "steps": 900, "label_smoothing": 0.2}
    (run / "train_config.json").write_text(json.dumps(decayed | {"weight_decay": 0.3}))
    assert trained().endswith(
        "(warmup 7, then cosine to 0.1 of it by step 900), weight decay 0.3, label smoothing 0.2"
    )
    (run / "train_config.json").unlink()
    assert trained() is None


def test_the_report_card_says_how_each_model_was_trained(run_dir, tmp_path):
    """analysis.json keeps each run's train_config.json as written ("trained"; null without
    one), and the model card shows it as `qkov info` does."""
    import shutil

    from qkov.config import TrainConfig

    bare = tmp_path / "bare"
    shutil.copytree(run_dir, bare)
    (bare / "train_config.json").unlink()
    out = tmp_path / "o"
    assert main(["analyze", str(run_dir), str(bare), "--out", str(out)]) == 0
    models = json.loads((out / "analysis.json").read_text())["models"]
    record = json.loads((run_dir / "train_config.json").read_text())
    assert models[0]["trained"] == record and models[1]["trained"] is None
    recipe = TrainConfig(**record).recipe(models[0]["config"]["n_ctx"])
    assert recipe.startswith(f"on {record['corpus']}, {record['batch_size']} x ")
    html = (out / "report.html").read_text()
    assert html.count("<th>trained</th>") == 1 and esc(recipe) in html


def test_info_says_where_a_run_stands_in_its_schedule_and_what_it_keeps(run_dir, tmp_path, capsys):
    """A run short of its schedule's end: whether a process is training it now (it holds
    the run's lock), or --resume continues it (its train state is kept), or neither; and
    the snapshots it keeps for `qkov forming`."""
    import shutil

    from qkov.runlock import RunLock
    from qkov.snapshots import save_snapshot
    from qkov.train_state import STATE

    def rows() -> dict[str, str]:
        assert main(["info", str(run)]) == 0
        out = capsys.readouterr().out.split("last record")[0]
        return dict(line.split(None, 1) for line in out.splitlines()[1:])

    run = tmp_path / "short"
    shutil.copytree(run_dir, run)
    assert rows()["weights"] == "of step 6" and "snapshots" not in rows()  # at its end
    tc = json.loads((run / "train_config.json").read_text())
    (run / "train_config.json").write_text(json.dumps(tc | {"steps": 12}))
    assert rows()["weights"] == "of step 6 of 12 (qkov train --resume continues it)"
    with RunLock(run) as lock:
        lock.acquire()
        assert rows()["weights"] == f"of step 6 of 12 (process {os.getpid()} is training it now)"
    (run / STATE).unlink()
    assert rows()["weights"] == "of step 6 of 12 (no train state)"
    (run / "shipped.json").write_text('{"step": 6}')
    assert rows()["weights"] == "of step 6 of 12 (stopped and shipped there: shipped.json)"
    (run / "shipped.json").unlink()
    model = qkov.load(run)
    for step in (2, 5):
        save_snapshot(run, model, step)
    assert rows()["snapshots"] == "2 kept, steps 2 to 5 (qkov forming reads them)"
