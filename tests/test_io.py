"""qkov.io: safetensors files whose bytes depend only on their tensors and metadata."""

from __future__ import annotations

import json

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from qkov.io import atomic_save_safetensors


def test_the_same_tensors_and_metadata_give_the_same_bytes(tmp_path):
    """safetensors (0.8) writes the metadata keys in a random order on every call (a Rust
    HashMap: its issue #584); qkov sorts them, so the same weights and metadata write
    byte-identical files, whatever order the metadata was built in."""
    g = torch.Generator().manual_seed(0)
    tensors = {
        "W_U": torch.randn(4, 3, generator=g),
        "W_E": torch.randn(3, 4, generator=g).half(),
        "counts": torch.arange(5),
    }
    keys = [f"k{i:02d}" for i in range(12)]
    value = 'na\u00efve "quoted" back\\slash\ttab'  # escaped and non-ASCII text keeps its length
    written = []
    for i, order in enumerate([keys, keys[::-1]] * 3):
        path = tmp_path / f"{i}.safetensors"
        atomic_save_safetensors(path, tensors, {k: f"{value} {k}" for k in order})
        written.append(path.read_bytes())
    assert all(b == written[0] for b in written)  # differed at almost every write before
    n = int.from_bytes(written[0][:8], "little")
    assert list(json.loads(written[0][8 : 8 + n])["__metadata__"]) == keys  # sorted
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == {k: f"{value} {k}" for k in keys}
    loaded = load_file(str(path))
    assert loaded.keys() == tensors.keys()
    assert all(torch.equal(loaded[k], t) for k, t in tensors.items())
