"""scripts/ship_models.py (copies trained runs into the package's demo_models): a run ships
whole, in float16 with its step, and bad input is one line, exit 2, with nothing written."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

import qkov

ROOT = Path(__file__).parents[1]
SCRIPT = ROOT / "scripts" / "ship_models.py"
SHIPPED = ROOT / "src" / "qkov" / "demo_models" / "attn0"


def _ship(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True)


def test_a_run_ships_in_float16_with_its_step_and_loads_as_it_was(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(SHIPPED, run)
    (tmp_path / "dest").mkdir()
    res = _ship(str(run), "--name", "mine", "--float16", "--dest", str(tmp_path / "dest"))
    assert res.returncode == 0, res.stderr
    out = tmp_path / "dest" / "mine"
    with safe_open(str(run / "model.safetensors"), "pt") as f:
        step = int(f.metadata()["step"])
    assert json.loads((out / "shipped.json").read_text()) == {"step": step}
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert f.metadata()["dtype"] == "float16" and int(f.metadata()["step"]) == step
    a, b = qkov.load(run), qkov.load(out)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert x.dtype == y.dtype and (x.half().float() == y).all(), name


@pytest.mark.parametrize(
    "lack,says",
    [
        (None, "is not a folder: pass a run directory"),
        ("model.safetensors", "has no model.safetensors: pass a run directory"),
        ("metrics.jsonl", "has no metrics.jsonl"),
    ],
)
def test_bad_input_is_one_line_and_exit_2_and_writes_nothing(tmp_path, lack, says):
    run = tmp_path / "run"
    if lack:
        shutil.copytree(SHIPPED, run)
        (run / lack).unlink()
    dest = tmp_path / "dest"
    dest.mkdir()
    res = _ship(str(run), "--dest", str(dest))
    assert res.returncode == 2 and says in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    assert list(dest.iterdir()) == []


def test_a_missing_dest_or_base_is_caught_before_anything_is_written(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(SHIPPED, run)
    res = _ship(str(run), "--dest", str(tmp_path / "nowhere"))
    assert res.returncode == 2 and "nowhere is not a folder: pass --dest" in res.stderr
    (tmp_path / "dest").mkdir()
    res = _ship(str(run), "--base", str(tmp_path / "nobase"), "--dest", str(tmp_path / "dest"))
    assert res.returncode == 2 and "nobase is not a folder" in res.stderr
    assert list((tmp_path / "dest").iterdir()) == []
