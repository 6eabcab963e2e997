"""Eigenvalues and OV statistics against dense references and planted copying heads."""

import json
import math

import pytest
import torch

import factories
from factories import match_multisets, nonzero
from qkov import AttnOnlyTransformer, ModelConfig
from qkov.circuits import ov_circuit
from qkov.eigenvalues import (
    eigenvalue_score,
    ov_eigenvalues,
    ov_statistics,
    ov_statistics_all,
    top1_self_fraction,
)
from qkov.errors import QkovError

random_model = factories.circuit_model


def test_ov_eigenvalues_match_dense_vocab_and_d_model_forms():
    model = random_model(2, seed=6)
    W = {k: v.double() for k, v in model.weights().items()}
    for l in range(2):
        for h in range(2):
            ov = W["W_V"][l, h] @ W["W_O"][l, h]
            eig = ov_eigenvalues(model, l, h).to(torch.complex128)
            vocab = torch.linalg.eigvals(W["W_E"] @ ov @ W["W_U"])  # 40 x 40
            small = torch.linalg.eigvals(ov @ W["W_U"] @ W["W_E"])  # 16 x 16
            match_multisets(nonzero(eig, 1e-5), nonzero(vocab, 1e-5), 1e-4)
            match_multisets(nonzero(eig, 1e-5), nonzero(small, 1e-5), 1e-4)
            ref = float(vocab.real.sum() / vocab.abs().sum())
            assert abs(ov_statistics(model, l, h).eigenvalue_score - ref) < 1e-3


@pytest.mark.parametrize("chunk_size", [1, 7, None])
def test_top1_fraction_matches_dense_argmax(chunk_size):
    model = random_model(1, seed=7, n_heads=4)
    for h in range(4):
        dense = ov_circuit(model, 0, h).dense()
        own = dense.diagonal()
        others = dense.clone().fill_diagonal_(float("-inf")).max(-1).values
        want = int((own > others).sum()) / 40
        assert top1_self_fraction(ov_circuit(model, 0, h), chunk_size) == want
        rows = torch.tensor([0, 3, 4, 17, 39])  # an estimate over these rows alone
        part = int((own[rows] > others[rows]).sum()) / 5
        assert top1_self_fraction(ov_circuit(model, 0, h), chunk_size, rows) == part
        # the same rows alone (ov_circuit(sources=...): their rows of the dense circuit),
        # as ov_statistics forms them for a sample; a shape that is neither is refused
        alone = ov_circuit(model, 0, h, sources=rows)
        torch.testing.assert_close(alone.dense(), dense[rows], rtol=0, atol=1e-5)
        assert top1_self_fraction(alone, chunk_size, rows) == part
        assert ov_statistics(model, 0, h, rows=rows).top1_fraction == part
        with pytest.raises(QkovError, match="one square matrix"):
            top1_self_fraction(alone, chunk_size, rows[:-1])


def planted_model(sign: float, d_vocab: int, d_model: int, seed: int = 0) -> AttnOnlyTransformer:
    """One head with W_OV = sign * identity on the token subspace; W_U = W_E^T."""
    g = torch.Generator().manual_seed(seed)
    cfg = ModelConfig(
        n_layers=1, n_heads=1, d_model=d_model, d_head=d_model, n_ctx=8, d_vocab=d_vocab
    )
    E = torch.randn(d_vocab, d_model, generator=g)
    E = E / E.norm(dim=-1, keepdim=True)  # unit rows: E E^T has 1 on the diagonal, < 1 off it
    weights = {
        "W_E": E,
        "W_pos": torch.randn(8, d_model, generator=g),
        "W_Q": torch.randn(1, 1, d_model, d_model, generator=g),
        "W_K": torch.randn(1, 1, d_model, d_model, generator=g),
        "W_V": torch.eye(d_model)[None, None] * 0.5,
        "W_O": torch.eye(d_model)[None, None] * 3.0 * sign,
        "W_U": E.T.clone(),
    }
    return AttnOnlyTransformer.from_weights(cfg, weights)


@pytest.mark.parametrize("d_vocab,d_model", [(200, 16), (8, 16)])
def test_planted_copying_head(d_vocab, d_model):
    stats = ov_statistics(planted_model(+1.0, d_vocab, d_model), 0, 0, chunk_size=33)
    assert stats.eigenvalue_score > 0.99
    assert stats.top1_fraction == 1.0
    assert "L0H0" in repr(stats)
    json.dumps(stats.to_dict())


@pytest.mark.parametrize("d_vocab,d_model", [(200, 16), (8, 16)])
def test_planted_anti_copying_head(d_vocab, d_model):
    stats = ov_statistics_all(planted_model(-1.0, d_vocab, d_model))[0]
    assert stats.eigenvalue_score < -0.99
    assert stats.top1_fraction == 0.0


def test_eigenvalue_score_edge_cases():
    assert eigenvalue_score(torch.tensor([1 + 1j, 1 - 1j])) == pytest.approx(2 / (2 * math.sqrt(2)))
    assert math.isnan(eigenvalue_score(torch.zeros(3, dtype=torch.complex64)))


def test_top1_fraction_counts_only_the_tokenizers_ids(tmp_path):
    """A vocabulary padded past its tokenizer (Pythia: 50,304 ids, 50,277 tokens): the OV
    top-1 fraction counts the tokenizer's ids as rows and as rivals, as skip-trigrams do;
    checked against the dense OV matrix over those ids."""
    import qkov
    from hf_models import hf_model, save_folder, tiny_tokenizer
    from qkov.factored import FactoredMatrix

    model = qkov.load(save_folder(hf_model("gpt2"), tmp_path / "gpt2", tiny_tokenizer()))
    n = model.tokenizer.get_vocab_size()
    assert n < model.cfg.d_vocab
    dense = ov_circuit(model, 0, 1).dense().float()
    over_known = float((dense[:n, :n].argmax(-1) == torch.arange(n)).float().mean())
    over_all = float((dense.argmax(-1) == torch.arange(len(dense))).float().mean())
    assert over_known != over_all  # the padding ids change the number here
    assert ov_statistics(model, 0, 1).top1_fraction == pytest.approx(over_known)

    # a padding column that tops every row: unfiltered, only that padding id is its own top-1
    A, B = torch.randn(12, 3), torch.randn(3, 12)
    A[:, 0], B[0, 10:] = 1.0, 0.0
    B[0, 11] = 1000.0  # ids 10 and 11 are padding
    known = torch.arange(12) < 10
    dense = (A @ B)[:10, :10]
    expected = float((dense.argmax(-1) == torch.arange(10)).float().mean())
    assert top1_self_fraction(FactoredMatrix(A, B)) == pytest.approx(1 / 12)
    assert top1_self_fraction(FactoredMatrix(A, B), known=known) == pytest.approx(expected)
