from pathlib import Path

import numpy as np
import pytest
import torch

from qkov import QkovError
from qkov.data import dataset as dataset_mod
from qkov.data import load_corpus, prepare, stdlib_files


def test_stdlib_corpus_is_found():
    files = stdlib_files()
    assert len(files) > 100
    assert any(f.name == "os.py" for f in files)


def test_binary_and_non_utf8_skipped_with_count(tmp_path):
    (tmp_path / "a.txt").write_text("hello world\n" * 10)
    (tmp_path / "b.bin").write_bytes(b"\x00\x01\x02" * 100)
    (tmp_path / "c.txt").write_bytes("caf\xe9".encode("latin-1"))
    corpus = load_corpus(str(tmp_path))
    assert [d.name.endswith("a.txt") for d in corpus.documents] == [True]
    assert corpus.skipped == 2


def test_empty_and_binary_only_corpus_errors(tmp_path):
    with pytest.raises(QkovError, match="not a file, folder or glob"):
        load_corpus(str(tmp_path / "missing"))
    (tmp_path / "x.bin").write_bytes(b"\x00" * 10)
    with pytest.raises(QkovError, match="only binary or non-UTF-8"):
        load_corpus(str(tmp_path))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(QkovError, match="no text"):
        load_corpus(str(empty))


def test_split_is_by_document_and_stable(tiny_corpus):
    corpus = load_corpus(str(tiny_corpus))
    train, val = corpus.split(0.2)
    assert val and train
    assert not {d.name for d in train} & {d.name for d in val}
    assert [d.name for d in corpus.split(0.2)[1]] == [d.name for d in val]


def test_prepare_caches_and_decodes(tiny_corpus, tmp_path, monkeypatch):
    data = prepare(str(tiny_corpus), vocab_size=300, cache_dir=tmp_path)
    assert data.d_vocab == 300
    assert data.train.max() < 300
    text = data.tokenizer.decode(data.train[:200].astype(np.int64).tolist())
    assert "def " in text and "return" in text

    def boom(*a, **k):
        raise AssertionError("re-encoded although the cache was warm")

    monkeypatch.setattr(dataset_mod, "train_tokenizer", boom)
    again = prepare(str(tiny_corpus), vocab_size=300, cache_dir=tmp_path)
    assert np.array_equal(np.asarray(again.train), np.asarray(data.train))


def test_batches_are_a_function_of_seed_and_step(tiny_corpus, tmp_path):
    data = prepare(str(tiny_corpus), vocab_size=300, cache_dir=tmp_path)
    a = data.train_batch(5, 4, 16, seed=1)
    assert a.shape == (4, 17)
    assert np.array_equal(a, data.train_batch(5, 4, 16, seed=1))
    assert not np.array_equal(a, data.train_batch(6, 4, 16, seed=1))
    val = data.val_batches(4, 16, 2)
    assert len(val) == 2 and val[0].shape == (4, 17)


def test_repeated_random_repeats_with_varying_period():
    data = prepare("repeated-random", vocab_size=500)
    b = data.train_batch(0, 8, 40, seed=0)
    assert b.shape == (8, 41)
    assert b.min() >= 1 and b.max() < 500
    periods = set()
    for row in b.tolist():
        # The row ends in a block repeated twice: find the period that explains the tail.
        period = next(p for p in range(2, 21) if row[-p:] == row[-2 * p : -p])
        periods.add(period)
    assert len(periods) > 1  # a fixed-offset head cannot solve the task
    assert torch.equal(b, data.train_batch(0, 8, 40, seed=0))


def test_induction_task_rows_repeat_and_skip():
    data = prepare("induction-task", vocab_size=97)
    b = data.train_batch(3, 10, 48, seed=0)
    assert b.shape == (10, 49) and b.min() >= 1 and b.max() < 97
    assert torch.equal(b, data.train_batch(3, 10, 48, seed=0))
    assert not torch.equal(b, data.train_batch(4, 10, 48, seed=0))
    periods = set()
    for row in b[:5].tolist():  # repeat rows: [filler f <= p][block of p in [6, 24]] repeated
        found = [(p, f) for p in range(6, 25) for f in range(p + 1) if row[f + p :] == row[f:-p]]
        assert found, row
        periods.add(found[0][0])
    assert len(periods) > 1
    skips = b[5:]
    follows = skips[:, 2:] == torch.as_tensor(data.perm)[skips[:, :-2]]
    assert 0.7 < follows.float().mean() < 0.9  # skip_prob 0.8 (plus chance hits)
    # The permutation never produces the separator and is a bijection of 1..V-1.
    assert sorted(data.perm[1:].tolist()) == list(range(1, 97))
    with pytest.raises(QkovError, match="--vocab-size >= 3"):
        prepare("induction-task", vocab_size=2)


def test_induction_task_too_short_context_leaves_no_run_directory(tmp_path):
    from qkov.cli import main

    out = tmp_path / "run"
    argv = ["train", "--corpus", "induction-task", "--n-ctx", "2", "--vocab-size", "50"]
    assert main([*argv, "--out", str(out), "--no-progress"]) == 2
    assert not out.exists()


def test_each_file_is_read_once_and_hidden_files_are_skipped(tmp_path, monkeypatch):
    """A symlink to a file already read, overlapping globs and a symlinked folder loop under
    `**` read each file once (a copy in both splits would leak training text into the
    held-out one); a folder's hidden files (.git) are skipped, as a glob skips them."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.txt").write_text("alpha " * 50)
    (tmp_path / "c" / "sub").mkdir()
    (tmp_path / "c" / "sub" / "b.txt").write_text("beta " * 50)
    (tmp_path / "c" / "link.txt").symlink_to("a.txt")
    (tmp_path / "c" / "sub" / "loop").symlink_to("..")
    (tmp_path / "c" / ".git").mkdir()
    (tmp_path / "c" / ".git" / "config").write_text("[core]\n\tbare = false\n")
    (tmp_path / "c" / ".notes.txt").write_text("hidden " * 50)
    names = ["c/a.txt", "c/sub/b.txt"]
    assert [d.name for d in load_corpus("c").documents] == names
    assert [d.name for d in load_corpus("c/a.txt,c/*.txt,c/**").documents] == names


def test_a_glob_that_matches_nothing_is_refused_even_beside_others(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.txt").write_text("alpha " * 50)
    with pytest.raises(QkovError, match=r"corpus glob 'notes/\*\.md' matches no file"):
        load_corpus("a.txt,notes/*.md")


def test_skipped_files_are_named(tmp_path):
    (tmp_path / "text.txt").write_bytes(b"hello world\n")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 ol\xe9\n".encode("latin-1"))
    corpus = load_corpus(str(tmp_path))
    assert [d.text for d in corpus.documents] == ["hello world\n"]
    assert corpus.skipped_files == (str(tmp_path / "latin1.txt"),)


def test_skipped_files_and_a_missing_heldout_split_are_announced(tmp_path, capsys):
    """One document: no held-out split, so the "val loss" is on training text: said."""
    (tmp_path / "book.txt").write_text("the quick brown fox jumps over the lazy dog\n" * 200)
    (tmp_path / "old.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    data = prepare(str(tmp_path), vocab_size=300, cache_dir=tmp_path / "cache")
    assert "1 file(s) skipped" in capsys.readouterr().err
    assert len(data.val) == 0
    data.val_batches(2, 16, 1)
    assert "val loss is measured on training text" in capsys.readouterr().err


def test_absolute_spec_and_an_unreadable_run_corpus(tmp_path, monkeypatch):
    from qkov.data.corpus import absolute_spec
    from qkov.data.evaluation import heldout_documents

    monkeypatch.chdir(tmp_path)
    assert absolute_spec("stdlib") == "stdlib"
    assert absolute_spec("induction-task") == "induction-task"
    assert absolute_spec("a.txt, notes/**/*.md,") == f"{tmp_path}/a.txt,{tmp_path}/notes/**/*.md"
    with pytest.raises(QkovError, match="run from the folder it was trained in, or evaluate"):
        heldout_documents(None, "gone/", 16)


def _library(root, n=60):
    """A stand-in standard library: n small .py modules under root (lib/python3.X)."""
    root.mkdir(parents=True)
    for i in range(n):
        body = "".join(f"def f{i}_{j}(x):\n    return x * {i + j}\n" for j in range(12))
        (root / f"mod{i:02d}.py").write_text(body, encoding="utf-8")
    return root


def test_evaluation_finds_the_held_out_documents_by_text_wherever_the_library_is(
    tmp_path, monkeypatch
):
    """The split is by file name, and names are absolute paths: with the library installed
    at another path (another machine), a split by name holds out other documents, most of
    them trained on. heldout.json names them by their text, so evaluation reads the same
    documents at any path, and says which are missing where the corpus changed."""
    import json
    import shutil

    from qkov.data.corpus import heldout_record, text_sha256
    from qkov.data.evaluation import evaluation_set, heldout_documents
    from qkov.data.tokenizer import train_tokenizer

    here = _library(tmp_path / "a" / "lib" / "python3.11")
    monkeypatch.setenv("QKOV_STDLIB", str(here))
    corpus = load_corpus("stdlib")
    train, val = corpus.split(0.2)
    record = heldout_record(corpus, 0.2)
    assert [r["sha256"] for r in record["documents"]] == [text_sha256(d.text) for d in val]
    tok = train_tokenizer((d.text for d in train), 300)
    at_training = heldout_documents(tok, "stdlib", 16, record=record).tokens

    there = tmp_path / "b" / "lib" / "python3.11"
    shutil.copytree(here, there)
    monkeypatch.setenv("QKOV_STDLIB", str(there))
    moved = load_corpus("stdlib")
    _, by_name = moved.split(0.2)
    trained = {text_sha256(d.text) for d in train}
    assert any(text_sha256(d.text) in trained for d in by_name)  # what a split by name reads
    ev = heldout_documents(tok, "stdlib", 16, record=record)
    assert torch.equal(ev.tokens, at_training)
    assert "found unchanged" not in ev.description

    # one held-out document edited, one removed: the others are read, and that is said
    first, second = (Path(d.name).name for d in val[:2])
    (there / first).write_text("def changed():\n    return 0\n" * 8, encoding="utf-8")
    (there / second).unlink()
    ev = heldout_documents(tok, "stdlib", 16, record=record)
    assert torch.equal(ev.tokens, at_training[2:])
    n = len(record["documents"])
    assert f"the {n - 2} of the {n} held out in training found unchanged" in ev.description

    # a run's record is read from its folder; a damaged one is refused, none is said
    class Model:
        cfg = type("Cfg", (), {"n_ctx": 16, "d_vocab": tok.get_vocab_size()})
        tokenizer = tok

    run = tmp_path / "run"
    run.mkdir()
    (run / "train_config.json").write_text(json.dumps({"corpus": "stdlib"}), encoding="utf-8")
    assert "split by file name" in evaluation_set(Model(), run).description
    (run / "heldout.json").write_text(json.dumps(record), encoding="utf-8")
    assert torch.equal(evaluation_set(Model(), run).tokens, at_training[2:])
    (run / "heldout.json").write_text('{"documents": [{"name": 1}]}', encoding="utf-8")
    with pytest.raises(QkovError, match="heldout.json is not a list of held-out documents"):
        evaluation_set(Model(), run)
