"""Shared fixtures: tiny corpora and cache dirs so tests never touch the user's cache."""

from __future__ import annotations

import random
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("QKOV_CACHE", str(tmp_path_factory.getbasetemp() / "qkov-cache"))


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """A folder of small, varied Python-like text files (real structure, made here)."""
    root = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "value", "count", "index", "total", "name"]
    for i in range(40):
        lines = []
        for j in range(60):
            a, b = rng.choice(words), rng.choice(words)
            lines.append(f"def {a}_{j}({b}):\n    return {b} + {rng.randint(0, 99)}  # {a}\n")
        (root / f"mod_{i:02d}.py").write_text("".join(lines), encoding="utf-8")
    return root


def pytest_configure(config):
    # The tests use tiny tensors: one thread avoids oversubscription on small shared machines,
    # and matches the subprocesses the crash tests start (OMP_NUM_THREADS=1): same kernels.
    import torch

    torch.set_num_threads(1)
