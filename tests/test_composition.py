"""Composition scores against the dense formula, a planted K-composition pair, baselines."""

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import factories
from qkov import AttnOnlyTransformer, ModelConfig
from qkov.composition import baseline_scores, composition_score, composition_scores
from qkov.errors import QkovError
from qkov.factored import FactoredMatrix


def dense_score(W_A: torch.Tensor, W_B: torch.Tensor) -> float:
    fro = torch.linalg.matrix_norm
    return float(fro(W_A @ W_B) / (fro(W_A) * fro(W_B)))


@settings(max_examples=30, deadline=None)
@given(
    m=st.integers(1, 8),
    k=st.integers(1, 8),
    n=st.integers(1, 8),
    r=st.integers(1, 4),
    seed=st.integers(0, 10_000),
)
def test_composition_score_matches_dense_formula(m, k, n, r, seed):
    g = torch.Generator().manual_seed(seed)
    A1, B1 = torch.randn(m, r, generator=g).double(), torch.randn(r, k, generator=g).double()
    A2, B2 = torch.randn(k, r, generator=g).double(), torch.randn(r, n, generator=g).double()
    want = dense_score(A1 @ B1, A2 @ B2)
    fa, fb = FactoredMatrix(A1, B1), FactoredMatrix(A2, B2)
    for left, right in [(fa, fb), (A1 @ B1, fb), (fa, A2 @ B2), (A1 @ B1, A2 @ B2)]:
        assert float(composition_score(left, right)) == pytest.approx(want, rel=1e-9)


def test_composition_scores_match_dense_per_pair():
    cfg = ModelConfig(n_layers=3, n_heads=2, d_model=12, n_ctx=8, d_vocab=20, seed=3)
    model = AttnOnlyTransformer(cfg)
    W = {k: v.double() for k, v in model.weights().items()}
    cs = composition_scores(model, n_baseline=20)
    assert cs.q.shape == cs.k.shape == cs.v.shape == (3, 2, 3, 2)
    for l0 in range(3):
        for h0 in range(2):
            OV0 = W["W_V"][l0, h0] @ W["W_O"][l0, h0]
            for l1 in range(3):
                for h1 in range(2):
                    got = [
                        float(cs.q[l0, h0, l1, h1]),
                        float(cs.k[l0, h0, l1, h1]),
                        float(cs.v[l0, h0, l1, h1]),
                    ]
                    if l0 >= l1:
                        assert all(math.isnan(x) for x in got)
                        continue
                    QK1 = W["W_Q"][l1, h1] @ W["W_K"][l1, h1].T
                    OV1 = W["W_V"][l1, h1] @ W["W_O"][l1, h1]
                    want = [dense_score(OV0, QK1), dense_score(OV0, QK1.T), dense_score(OV0, OV1)]
                    assert got == pytest.approx(want, rel=1e-4)


def test_planted_k_composition_partner():
    """L1H0's keys read exactly the subspace L0H1 writes to; every other write is elsewhere."""
    g = torch.Generator().manual_seed(0)
    D, Dh = 16, 4
    cfg = ModelConfig(n_layers=2, n_heads=3, d_model=D, d_head=Dh, n_ctx=8, d_vocab=20)
    W_O = torch.zeros(2, 3, Dh, D)
    W_O[0, 0, :, 8:12] = torch.randn(Dh, Dh, generator=g)
    W_O[0, 1, :, 0:4] = torch.eye(Dh)  # the partner writes dims 0..3
    W_O[0, 2, :, 12:16] = torch.randn(Dh, Dh, generator=g)
    W_O[1] = torch.randn(3, Dh, D, generator=g)
    W_K = torch.randn(2, 3, D, Dh, generator=g)
    W_K[1, 0] = 0
    W_K[1, 0, 0:4] = torch.eye(Dh)  # and L1H0's keys read dims 0..3 only
    weights = {
        "W_E": torch.randn(20, D, generator=g),
        "W_pos": torch.randn(8, D, generator=g),
        "W_Q": torch.randn(2, 3, D, Dh, generator=g),
        "W_K": W_K,
        "W_V": torch.randn(2, 3, D, Dh, generator=g),
        "W_O": W_O,
        "W_U": torch.randn(D, 20, generator=g),
    }
    model = AttnOnlyTransformer.from_weights(cfg, weights)
    cs = composition_scores(model, n_baseline=50)
    l0, h0, score = cs.partner(1, 0, "k")
    assert (l0, h0) == (0, 1)
    assert score > cs.baseline_mean["k"] + 3 * cs.baseline_std["k"]
    assert cs.k[0, 0, 1, 0] == pytest.approx(0.0, abs=1e-6)  # writes dims 8..11: unseen
    assert cs.top("k", 1)[0][:4] == (0, 1, 1, 0)
    with pytest.raises(QkovError, match="no earlier heads"):
        cs.partner(0, 0)


def test_baseline_is_seeded_and_matches_dense_random_heads():
    D, Dh, n = 12, 3, 300
    a = baseline_scores(D, Dh, n, seed=1)
    b = baseline_scores(D, Dh, n, seed=1)
    assert all(torch.equal(a[k], b[k]) for k in "qkv")
    assert not torch.equal(a["v"], baseline_scores(D, Dh, n, seed=2)["v"])
    # Independent dense estimate of the same expectation.
    g = torch.Generator().manual_seed(99)
    ref = [
        dense_score(
            torch.randn(D, Dh, generator=g) @ torch.randn(Dh, D, generator=g),
            torch.randn(D, Dh, generator=g) @ torch.randn(Dh, D, generator=g),
        )
        for _ in range(n)
    ]
    ref_t = torch.tensor(ref)
    for kind in "qkv":
        se = math.hypot(float(a[kind].std()), float(ref_t.std())) / math.sqrt(n)
        assert abs(float(a[kind].mean()) - float(ref_t.mean())) < 5 * se


def test_to_dict_and_repr():
    model = AttnOnlyTransformer(ModelConfig(n_layers=2, n_heads=2, d_model=8, d_vocab=10))
    cs = composition_scores(model, n_baseline=10)
    data = json.loads(json.dumps(cs.to_dict()))
    assert data["k"][1][0][0][0] is None and isinstance(data["k"][0][0][1][0], float)
    assert "baseline" in repr(cs)
    with pytest.raises(QkovError, match="n_baseline"):
        composition_scores(model, n_baseline=1)


def test_composition_of_a_general_model_is_that_of_its_folded_weights():
    """layernorm + MLP + bias: the scores equal ||W_A W_B|| / (||W_A|| ||W_B||) computed here
    from the folded weights (norm weight on the reading rows, centred writes)."""
    model = factories.general_model(2, normalization="layernorm").double()
    comp = composition_scores(model, n_baseline=4)
    w = {k: v.detach() for k, v in model.weights().items()}
    w1 = w["ln1_w"][1]  # layer 1's norm weight on its reading rows
    for h0 in range(model.cfg.n_heads):
        W_O = w["W_O"][0, h0] - w["W_O"][0, h0].mean(-1, keepdim=True)  # centred write
        OV = w["W_V"][0, h0] * w["ln1_w"][0][:, None]
        OV = (OV - OV.mean(0, keepdim=True)) @ W_O
        for h1 in range(model.cfg.n_heads):
            Q, K, V = (w[f"W_{x}"][1, h1] * w1[:, None] for x in "QKV")
            Q, K, V = (m - m.mean(0, keepdim=True) for m in (Q, K, V))
            QK, OV1 = Q @ K.T, V @ (w["W_O"][1, h1] - w["W_O"][1, h1].mean(-1, keepdim=True))

            def score(a, b):
                return torch.linalg.matrix_norm(a @ b) / (
                    torch.linalg.matrix_norm(a) * torch.linalg.matrix_norm(b)
                )

            assert abs(float(comp.q[0, h0, 1, h1]) - float(score(OV, QK))) < 1e-9
            assert abs(float(comp.k[0, h0, 1, h1]) - float(score(OV, QK.T))) < 1e-9
            assert abs(float(comp.v[0, h0, 1, h1]) - float(score(OV, OV1))) < 1e-9


def test_k_composition_alone_is_the_same_k_and_the_same_labels():
    """The explorer's head roles need K-composition alone (the partners); each kind costs
    pairs x d_head^2 x d_model (~20 s at TinyLlama-1.1B's 704 heads), so it asks for K only:
    the same K scores, partners and labels, and Q, V say they were not computed."""
    from qkov.heads import classify_heads

    model = factories.induction_model(noise=0.02)
    full = composition_scores(model)
    only_k = composition_scores(model, kinds=("k",))
    assert torch.equal(torch.nan_to_num(only_k.k), torch.nan_to_num(full.k))
    assert only_k.q is None and only_k.v is None and only_k.to_dict()["q"] is None
    with pytest.raises(QkovError, match="Q-composition was not computed"):
        only_k.top("q")
    assert only_k.baseline_mean == full.baseline_mean
    a, b = classify_heads(model), classify_heads(model, composition=("k",))
    assert [(r.name, r.label, r.partners) for r in a.records] == [
        (r.name, r.label, r.partners) for r in b.records
    ]
    assert any(r.partners for r in b.records)


def test_later_heads_alone_are_their_columns_of_the_full_scores():
    """composition_scores(later=...) computes those later heads' columns (the same numbers
    as over every pair) and leaves every other column NaN; a head the model lacks is
    refused."""
    model = AttnOnlyTransformer(ModelConfig(n_layers=3, n_heads=3, d_model=24, d_vocab=16, seed=3))
    full = composition_scores(model, n_baseline=4)
    later = [(2, 1), (1, 0), (2, 2), (0, 1)]  # layer 0 has no earlier heads: its column is NaN
    part = composition_scores(model, n_baseline=4, later=later)
    for kind in "qkv":
        got, want = getattr(part, kind), getattr(full, kind)
        for l in range(3):
            for h in range(3):
                if (l, h) in later:  # the same numbers, up to the matmul's blocking
                    torch.testing.assert_close(
                        got[..., l, h], want[..., l, h], rtol=1e-6, atol=0, equal_nan=True
                    )
                else:
                    assert got[..., l, h].isnan().all()
    assert part.baseline_mean == full.baseline_mean
    none = composition_scores(model, n_baseline=4, later=[(0, 1)])  # no earlier layer
    assert all(getattr(none, kind).isnan().all() for kind in "qkv")
    with pytest.raises(QkovError, match="no head L3H0: the model has 3 layers of 3 heads"):
        composition_scores(model, n_baseline=4, later=[(3, 0)])


def test_partners_alone_compute_k_composition_into_the_induction_heads_only():
    """`qkov heads` and the explorer show no composition past the induction heads' partners:
    classify_heads(composition=()) computes K-composition into the induction heads' columns
    alone (at TinyLlama-1.1B's 704 heads, 1 column in ~70 instead of ~20 s), and gives the
    same records (labels, partners with their z-scores, knock-outs); the other columns are
    NaN. Another kind without K keeps its full matrix."""
    from qkov.classification import classify_heads

    model = factories.induction_model(noise=0.02)
    full = classify_heads(model)
    least = classify_heads(model, composition=())
    for a, b in zip(least.records, full.records, strict=True):
        assert (a.name, a.label, a.decided_by, a.knockout) == (
            b.name,
            b.label,
            b.decided_by,
            b.knockout,
        )
        assert [p.name for p in a.k_composition] == [p.name for p in b.k_composition]
        assert [p.name for p in a.partners] == [p.name for p in b.partners]
        for p, q in zip(a.k_composition, b.k_composition, strict=True):
            assert p.score == pytest.approx(q.score, rel=1e-6) and p.z == pytest.approx(
                q.z, rel=1e-6
            )
    inductions = [(r.layer, r.head) for r in full.records if r.label == "induction"]
    assert inductions == [(1, 0)] and full.record(1, 0).partners
    k = least.composition.k
    for l, h in [(l, h) for l in range(2) for h in range(2)]:
        if (l, h) in inductions:  # one column alone is another matmul shape: equal to ~1 ulp
            assert torch.allclose(
                k[..., l, h], full.composition.k[..., l, h], rtol=1e-6, atol=0, equal_nan=True
            )
        else:
            assert k[..., l, h].isnan().all()
    assert least.composition.q is None and least.composition.v is None
    q_only = classify_heads(model, composition=("q",)).composition
    assert torch.equal(q_only.q.nan_to_num(), full.composition.q.nan_to_num())
    assert torch.equal(q_only.k.nan_to_num(), k.nan_to_num()) and q_only.v is None
