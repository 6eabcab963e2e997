"""benchmarks/gpu.py runs end to end on the CPU with --tiny (the GPU run is the same code
with the full config), and its numbers are the ones qkov.flops defines."""

import json
import os
import subprocess
import sys
from pathlib import Path

from qkov import ModelConfig
from qkov.flops import train_step_flops

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "gpu.py"


def test_gpu_benchmark_runs_tiny_on_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    argv = ["--tiny", "--device", "cpu", "--rounds", "2", "--budget", "120", "--out", str(out)]
    res = subprocess.run(
        [sys.executable, str(SCRIPT), *argv], env=env, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    assert "| qkov attn-only |" in res.stdout and f"wrote {out}" in res.stdout
    result = json.loads(out.read_text())
    c = result["config"]
    cfg = ModelConfig(**{k: v for k, v in c.items() if k != "batch"})
    tokens = c["batch"] * c["n_ctx"]
    attn = result["qkov"]["attn-only"]
    assert attn["step_flops"] == train_step_flops(cfg, c["batch"])
    seconds = attn["step_ms"] / 1e3
    # MFU is the step's FLOPs over its time over the matmul peak measured in the same run
    mfu = attn["step_flops"] / seconds / result["matmul_peak_flops"]
    assert abs(attn["mfu"] - mfu) <= 1e-4 + 1e-3 * mfu
    # tokens/s from the unrounded time: step_ms is rounded to the microsecond (a relative
    # error of up to 0.5 us / step) and tokens_per_s to 0.1
    rate = tokens / seconds
    assert abs(attn["tokens_per_s"] - rate) <= 0.051 + rate * 0.51e-6 / seconds
    assert result["memory_mib"] is None  # CUDA only; said so in the table
    assert "peak memory: not measured (needs CUDA)" in res.stdout
    vs = result["vs_transformer_lens"]
    if vs is None:  # TransformerLens missing: the run goes on and says so
        assert "TransformerLens not importable: skipped" in res.stdout
    else:
        med, lo, hi = vs["qkov_over_TL"]
        assert lo <= med <= hi and "qkov / TL training speed" in res.stdout
