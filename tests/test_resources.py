"""Memory of a training step (qkov.resources): oversized configurations are refused before
the model is built or a file written."""

from __future__ import annotations

import pytest

from qkov import ModelConfig, QkovError
from qkov.cli import main
from qkov.loss import chunk_rows
from qkov.resources import available_memory, check_step_memory, step_memory


def test_step_memory_is_the_documented_formula():
    cfg = ModelConfig(n_layers=2, n_heads=4, d_model=64, n_ctx=32, d_vocab=500)
    B, T, L, H, D, Dh, V = 3, 32, 2, 4, 64, 16, 500
    P = 2 * V * D + T * D + L * H * 4 * D * Dh
    mem = step_memory(cfg, B)
    assert mem.params == 4 * (4 * P + T * D)
    assert mem.attention == 4 * L * B * H * T * T
    acts = L * (4 * B * T * H * Dh + 3 * B * T * D) + 2 * B * T * D + min(chunk_rows(V), B * T) * V
    assert mem.activations == 4 * acts
    assert mem.total == mem.params + mem.attention + mem.activations
    assert 0 < available_memory("cpu")


@pytest.mark.parametrize(
    "flags, fix",
    [
        (["--n-ctx", "10000000"], "lower --n-ctx or --batch-size"),
        (["--n-ctx", "100000", "--batch-size", "1"], "lower --n-ctx or --batch-size"),
        (["--d-model", "1000000", "--n-heads", "1"], "lower --d-model, --vocab-size"),
        (["--d-mlp", "10000000000"], "d_mlp=10000000000, d_vocab"),
        (["--d-mlp", "10000000000"], "lower --d-mlp, --n-ctx or --batch-size"),
    ],
)
def test_oversized_configuration_is_refused_at_once(tmp_path, capsys, monkeypatch, flags, fix):
    """Refused before the model is built (W_pos of 10M positions took minutes to
    initialise): building one here fails the test."""

    def never(*args, **kwargs):
        raise AssertionError("the model was built before the memory check")

    monkeypatch.setattr("qkov.model.Transformer.__init__", never)
    out = tmp_path / "run"
    rc = main(["train", "--corpus", "repeated-random", *flags, "--out", str(out), "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "GB for a training step" in err[0] and fix in err[0], err
    assert "is available on cpu" in err[0]
    assert not out.exists()


def test_a_laptop_configuration_fits():
    check_step_memory(ModelConfig(), batch_size=16)  # the defaults: well under 1 GB
    with pytest.raises(QkovError, match="needs about"):
        check_step_memory(ModelConfig(n_ctx=200_000), batch_size=16)


def test_size_str_is_the_one_way_sizes_are_printed():
    from qkov.resources import size_str

    assert [size_str(n) for n in (6.6e9, 1e9, 850e6, 1e6, 12_345, 0)] == [
        "6.6 GB",
        "1.0 GB",
        "850.0 MB",
        "1.0 MB",
        "12.3 kB",
        "0.0 kB",
    ]
