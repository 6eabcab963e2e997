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
