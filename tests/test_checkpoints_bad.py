"""Bad Hugging Face folders: each is refused with ONE line that says what is wrong and how
to mend it, exit status 2 from the CLI, before any weight is read."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from hf_models import hf_model, save_folder, tiny_tokenizer
from qkov.cli import main
from qkov.resources import size_str


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """A good folder of each kind the cases start from: single-file and sharded."""
    root = tmp_path_factory.mktemp("hf")
    return {
        "single": save_folder(hf_model("gpt2"), root / "single", tiny_tokenizer()),
        "sharded": save_folder(hf_model("llama"), root / "sharded", max_shard_size="20KB"),
    }


def _edit_config(folder: Path, **changes) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(cfg | changes))


def _unknown_type(d: Path) -> None:
    _edit_config(d, model_type="bert")


def _missing_shard(d: Path) -> None:
    sorted(d.glob("model-*-of-*.safetensors"))[1].unlink()


def _bin_only(d: Path) -> None:
    for f in d.glob("*.safetensors*"):
        f.unlink()
    (d / "pytorch_model.bin").write_bytes(b"\x80\x02not read")


def _other_vocab(d: Path) -> None:
    from tokenizers import Tokenizer, models

    vocab = {f"t{i}": i for i in range(500)}
    Tokenizer(models.WordLevel(vocab, unk_token="t0")).save(str(d / "tokenizer.json"))


def _shapes_disagree(d: Path) -> None:
    _edit_config(d, n_embd=48)


def _layers_disagree(d: Path) -> None:
    _edit_config(d, num_hidden_layers=3)


# (case, folder it starts from, how it is broken, words the one line must hold)
CASES: list[tuple[str, str, Callable[[Path], None], list[str]]] = [
    (
        "unknown model_type",
        "single",
        _unknown_type,
        ["model_type 'bert'", "gpt2, gpt_neox, llama, mistral, qwen2"],
    ),
    ("missing shard", "sharded", _missing_shard, ["missing shard model-", "download every"]),
    ("bin only", "single", _bin_only, ["pytorch_model.bin", "pickle", "save_pretrained"]),
    ("tokenizer of another vocab", "single", _other_vocab, ["500 tokens", "vocabulary has 96"]),
    ("config shapes vs tensors", "single", _shapes_disagree, ["has shape", "implies", "[96, 48]"]),
    ("config layers vs tensors", "sharded", _layers_disagree, ["no tensor 'layers.2.", "belong"]),
]


@pytest.mark.parametrize("command", ["heads", "circuits", "sample", "analyze", "info"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_folder_is_one_line_exit_2(case, command, folders, tmp_path):
    name, start, damage, words = case
    folder = tmp_path / name.replace(" ", "_")
    shutil.copytree(folders[start], folder)
    damage(folder)
    argv = [command, str(folder)] + (
        ["--out", str(tmp_path / "out")] if command == "analyze" else []
    )
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        assert main(argv) == 2
    lines = err.getvalue().strip().splitlines()
    assert len(lines) == 1, lines
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert not (tmp_path / "out").exists()  # refused before any work


@pytest.mark.parametrize("command", ["heads", "analyze", "info"])
def test_a_folder_too_big_for_the_memory_is_refused_before_it_is_read(
    command, folders, tmp_path, monkeypatch
):
    """A model whose load would not fit in the available memory is refused at once with one
    line, not killed minutes into reading it; `qkov info` reads no weight and still runs."""
    import qkov.hf
    from qkov.hf import inspect_hf

    folder = folders["sharded"]
    need = inspect_hf(folder).analysis_bytes()  # the fold counted: these commands analyse
    monkeypatch.setattr(qkov.hf, "available_memory", lambda: need - 1)

    def no_read(*args, **kwargs):
        raise AssertionError("read the weights")

    monkeypatch.setattr(qkov.hf, "read_tensors", no_read)
    argv = [command, str(folder)] + (
        ["--out", str(tmp_path / "out")] if command == "analyze" else []
    )
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    if command == "info":
        assert code == 0
        return
    lines = err.getvalue().strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert f"{folder}: loading and folding" in lines[0], lines
    assert f"parameters in float32 takes at least {size_str(need)}, and " in lines[0], lines
    assert f"{size_str(need - 1)} is available" in lines[0], lines
    assert not (tmp_path / "out").exists()
    # with the memory it needs, the same folder loads
    monkeypatch.undo()  # the weights can be read again
    monkeypatch.setattr(qkov.hf, "available_memory", lambda: need)
    assert qkov.hf.load_hf(folder, for_analysis=True).cfg.n_layers > 0


def test_a_folder_that_loads_but_cannot_be_folded_is_refused_by_the_analyses(tmp_path, monkeypatch):
    """Memory for the load but not for the fold every analysis makes: `qkov heads` is
    refused at once (one line), `qkov sample`, which does not fold, runs."""
    import qkov.hf
    from qkov.hf import inspect_hf

    folder = save_folder(hf_model("llama").to(torch.bfloat16), tmp_path / "bf16", tiny_tokenizer())
    info = inspect_hf(folder)
    need = info.analysis_bytes()
    assert info.load_bytes(torch.float32) < need  # bf16 stored: the fold decides
    monkeypatch.setattr(qkov.hf, "available_memory", lambda: need - 1)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        assert main(["heads", str(folder)]) == 2
        assert main(["sample", str(folder), "--tokens", "3"]) == 0
    lines = err.getvalue().strip().splitlines()
    assert len(lines) == 1 and "loading and folding" in lines[0], lines
    assert f"at least {size_str(need)}, and {size_str(need - 1)} is available" in lines[0]
