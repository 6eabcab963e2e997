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
