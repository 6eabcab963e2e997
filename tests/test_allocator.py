"""qkov.allocator: glibc's thresholds set once, a no-op elsewhere, and CPU training sets them."""

import platform

import pytest

import qkov.allocator
import qkov.train
from qkov import ModelConfig
from qkov.data import prepare
from qkov.train import TrainConfig, train

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not GLIBC, reason="the setting exists only in glibc's malloc")
def test_keep_freed_memory_takes_on_glibc_and_is_idempotent():
    assert qkov.allocator.keep_freed_memory() is True
    assert qkov.allocator.keep_freed_memory() is True


def test_keep_freed_memory_is_a_no_op_without_glibc(monkeypatch):
    monkeypatch.setattr(qkov.allocator, "_kept", False)
    monkeypatch.setattr(qkov.allocator.platform, "libc_ver", lambda: ("", ""))
    assert qkov.allocator.keep_freed_memory() is False


def test_cpu_training_keeps_freed_memory(tiny_corpus, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(qkov.train, "keep_freed_memory", lambda: calls.append(1) or True)
    data = prepare(str(tiny_corpus), vocab_size=300, cache_dir=tmp_path / "cache")
    cfg = ModelConfig(n_layers=1, n_heads=2, d_model=16, n_ctx=16, d_vocab=300)
    tc = TrainConfig(steps=2, batch_size=2, warmup=1, eval_interval=2, ckpt_interval=2)
    train(cfg, tc, tmp_path / "run", progress=False, data=data)
    assert calls == [1]


def _resident_bytes() -> int:
    return int(open("/proc/self/statm").read().split()[1]) * 4096


@pytest.mark.skipif(not GLIBC, reason="malloc_trim exists only in glibc")
def test_return_freed_memory_gives_a_fragmented_heap_back():
    """With training's thresholds (8 MB blocks come from the heap, trimmed only past 1 GB
    free) 40 freed 8 MB blocks, each pinned in place by a small block after it, stay in the
    process until return_freed_memory hands their pages back: the growth per head that a
    1B model's per-head loops showed."""
    import torch

    assert qkov.allocator.keep_freed_memory() is True
    big, pins = [], []
    for _ in range(40):
        big.append(torch.ones(2 * 2**20))  # 8 MB, every page touched
        pins.append(torch.ones(1024))
    del big
    held = _resident_bytes()
    assert qkov.allocator.return_freed_memory() is True
    assert held - _resident_bytes() > 200 * 2**20


def test_return_freed_memory_is_a_no_op_without_glibc(monkeypatch):
    monkeypatch.setattr(qkov.allocator.platform, "libc_ver", lambda: ("", ""))
    assert qkov.allocator.return_freed_memory() is False


def test_qkov_circuits_returns_freed_memory_after_each_head(tmp_path, monkeypatch, capsys):
    import factories
    from qkov import save_model
    from qkov.cli import main

    model = factories.general_model(2)  # 2 layers x 3 heads
    save_model(model, tmp_path / "m")
    calls = []
    monkeypatch.setattr(qkov.allocator, "return_freed_memory", lambda: calls.append(1) or True)
    assert main(["circuits", str(tmp_path / "m"), "-k", "2"]) == 0
    assert len(calls) == 2 * 6  # the OV stage and the skip-trigram stage, once a head each
