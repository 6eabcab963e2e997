"""DDP under torchrun: 2 CPU processes (gloo) train like 1 process on the same global batch.

Tolerance: the 2-process run averages two half-batch gradients where the single process
takes the mean over the whole batch, so the sums run in a different order; after 4 AdamW
steps the weights agreed to <= 8e-8 (float32). We allow 1e-6 absolute (weights are
O(0.02-0.1)); a missing gradient average or a wrong resume moves weights by ~lr = 1e-2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qkov import ModelConfig, QkovError, distributed
from qkov.checkpoint import load_safetensors
from qkov.train import TrainConfig, train

dist = pytest.importorskip("torch.distributed", reason="torch.distributed is not available")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

ATOL = 1e-6
CFG = ModelConfig(n_layers=2, n_heads=2, d_model=16, n_ctx=12, d_vocab=24, seed=1)
TC = TrainConfig(
    corpus="repeated-random",
    steps=4,
    batch_size=4,
    lr=1e-2,
    warmup=1,
    eval_interval=2,
    eval_batches=1,
    ckpt_interval=2,
    seed=3,
)

# Each worker trains to step 2 (checkpoint, stop), then resumes from the files to step 4.
# The script owns the process group because it calls train() twice.
SCRIPT = """
import json, sys
import torch.distributed as dist
from qkov import ModelConfig, QkovError, distributed
from qkov.train import TrainConfig, train
out = sys.argv[1]
cfg, tc = ModelConfig(**json.loads(sys.argv[2])), TrainConfig(**json.loads(sys.argv[3]))
dist.init_process_group("gloo")  # owned by this script: train() joins it, leaves it open
train(cfg, tc, out, stop_after=2, progress=False)
if dist.get_rank() == 0:  # one line: two ranks printing at once interleave their output
    with open(out + "/metrics.jsonl") as f:
        print("STEPS_AFTER_STOP", [json.loads(line)["step"] for line in f], flush=True)
train(None, tc, out, resume=True, progress=False)
dist.destroy_process_group()
"""


def torchrun(tmp_path: Path, out: Path) -> str:
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        str(script),
        str(out),
        json.dumps(CFG.to_dict()),
        json.dumps(TC.__dict__),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_and_resume(tmp_path):
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    stdout = torchrun(tmp_path, ddp)
    assert "STEPS_AFTER_STOP [2]" in stdout  # stopped at step 2 with a checkpoint
    train(CFG, TC, single, progress=False)  # one process, whole global batch, no stop

    got = load_safetensors(ddp / "model.safetensors")
    want = load_safetensors(single / "model.safetensors")
    for name, value in want.items():
        diff = (got[name] - value).abs().max().item()
        print(f"{name}: max |ddp - single| = {diff:.2e}")
        assert diff <= ATOL, f"{name} differs by {diff}"
    assert int(load_safetensors(ddp / "train_state.safetensors")["step"]) == 4
    # Rank 0 alone wrote the metrics: one record per logged step, no duplicates.
    steps = [json.loads(line)["step"] for line in (ddp / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4]


def test_each_rank_takes_its_own_rows_of_the_global_batch():
    batch = torch.arange(12).reshape(6, 2)
    parts = [distributed.share(batch, distributed.Dist(rank=r, world=3)) for r in range(3)]
    assert torch.equal(torch.cat(parts), batch)
    assert distributed.share(batch, distributed.Dist()) is batch
    assert distributed.mean_and_any(2.5, True, distributed.Dist()) == (2.5, True)


def test_global_batch_must_split_over_the_processes(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(QkovError, match="multiple of 2"):
        distributed.setup("cpu", batch_size=3)
