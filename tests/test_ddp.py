"""DDP under torchrun: 2 CPU processes (gloo) train like 1 process on the same global batch.

Tolerance: the 2-process run averages two half-batch gradients where the single process
takes the mean over the whole batch, so the sums run in a different order; after a few
AdamW steps the weights agree to ~1e-7 (float32). We allow 1e-5 absolute (weights are
O(0.02-0.1)); a wrong share of the batch, a missing gradient average or a wrong resume
differs by ~1e-3 (about lr)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qkov import ModelConfig
from qkov.checkpoint import load_safetensors
from qkov.train import TrainConfig, train

dist = pytest.importorskip("torch.distributed", reason="torch.distributed is not available")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

ATOL = 1e-5
CFG = ModelConfig(n_layers=2, n_heads=2, d_model=16, n_ctx=12, d_vocab=24, seed=1)
TC = TrainConfig(corpus="repeated-random", steps=4, batch_size=4, lr=1e-2, warmup=1,
                 eval_interval=2, eval_batches=1, ckpt_interval=2, seed=3)

SCRIPT = """
import dataclasses, json, sys
from qkov import ModelConfig
from qkov.train import TrainConfig, train
out, stop_after, resume = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "resume"
cfg = None if resume else ModelConfig(**json.loads(sys.argv[4]))
tc = TrainConfig(**json.loads(sys.argv[5]))
train(cfg, tc, out, resume=resume, stop_after=stop_after, progress=False)
"""


def torchrun(tmp_path: Path, out: Path, stop_after: int, resume: bool) -> None:
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           str(script), str(out), str(stop_after), "resume" if resume else "new",
           json.dumps(CFG.to_dict()), json.dumps(TC.__dict__)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]


def test_two_gloo_processes_match_one_process_and_resume(tmp_path):
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    torchrun(tmp_path, ddp, stop_after=2, resume=False)  # stops with a checkpoint at step 2
    assert json.loads((ddp / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 2
    torchrun(tmp_path, ddp, stop_after=4, resume=True)  # resumes to step 4
    train(CFG, TC, single, progress=False)

    got = load_safetensors(ddp / "model.safetensors")
    want = load_safetensors(single / "model.safetensors")
    for name, value in want.items():
        diff = (got[name] - value).abs().max().item()
        assert diff <= ATOL, f"{name} differs by {diff}"
    start = load_safetensors(tmp_path / "single" / "train_state.safetensors")
    assert int(start["step"]) == 4
    # Rank 0 alone wrote the metrics: one record per logged step, no duplicates.
    steps = [json.loads(line)["step"] for line in (ddp / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4]
    assert torch.isfinite(got["W_E"]).all()
