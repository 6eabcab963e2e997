"""Virtual heads' OV circuits against the dense product and the V-composition scores."""

import json

import pytest
import torch

import factories
from qkov.circuits import token_embedding
from qkov.eigenvalues import eigenvalue_score
from qkov.virtual_heads import virtual_head_ov

random_model = factories.circuit_model


@pytest.mark.parametrize("norm", ["none", "rms"])
def test_virtual_head_ov_against_dense_and_composition_scores(norm):
    from qkov.composition import composition_scores

    model = random_model(3, seed=2, norm=norm)
    vh = virtual_head_ov(model)
    H = model.cfg.n_heads
    assert len(vh) == 3 * H * H  # pairs of layers (0,1), (0,2), (1,2)
    assert [v.v_composition for v in vh] == sorted((v.v_composition for v in vh), reverse=True)
    v_scores = composition_scores(model, n_baseline=2).v
    W = model.weights()
    E = token_embedding(model)
    for v in vh[:4]:
        (l0, h0), (l1, h1) = v.heads
        assert v.v_composition == pytest.approx(float(v_scores[l0, h0, l1, h1]), rel=1e-4)
        dense = E @ W["W_V"][l0, h0] @ W["W_O"][l0, h0] @ W["W_V"][l1, h1] @ W["W_O"][l1, h1]
        dense = dense @ W["W_U"]  # [d_vocab, d_vocab]: small here, to check against
        assert v.eigenvalue_score == pytest.approx(
            eigenvalue_score(torch.linalg.eigvals(dense)), abs=1e-3
        )
        json.dumps(v.to_dict())


def test_virtual_head_ov_top_is_the_head_of_every_pair_in_chunks(monkeypatch):
    """Every pair at once formed [N d_head]^2 twice (16 GB at TinyLlama-1.1B's 704 heads,
    where analyze was killed): pairs now go VIRTUAL_CHUNK at a time and `top` keeps only
    the highest V-composition, with the same numbers as every pair at once."""
    import qkov.virtual_heads as V

    model = factories.general_model(3, normalization="rmsnorm", d_model=24, n_heads=3)
    every = V.virtual_head_ov(model)
    assert len(every) == 3 * 3 * 3  # (l0 < l1) layer pairs x heads^2
    monkeypatch.setattr(V, "VIRTUAL_CHUNK", 2)
    top = V.virtual_head_ov(model, top=5)
    assert [v.heads for v in top] == [v.heads for v in every[:5]]
    for a, b in zip(top, every, strict=False):
        assert a.v_composition == pytest.approx(b.v_composition)
        assert a.eigenvalue_score == pytest.approx(b.eigenvalue_score, abs=1e-5)
    assert [v.heads for v in V.virtual_head_ov(model)] == [v.heads for v in every]
