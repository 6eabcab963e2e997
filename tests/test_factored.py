"""FactoredMatrix against dense torch references."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from factories import match_multisets
from qkov.errors import QkovError
from qkov.factored import FactoredMatrix

dims = st.integers(min_value=1, max_value=7)


def random_fm(m: int, r: int, n: int, batch: tuple[int, ...] = (), seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(*batch, m, r, generator=g, dtype=torch.float64)
    B = torch.randn(*batch, r, n, generator=g, dtype=torch.float64)
    return FactoredMatrix(A, B), A @ B


def nonzero(eigs: torch.Tensor, tol: float = 1e-6) -> torch.Tensor:
    return eigs[eigs.abs() > tol]


@settings(max_examples=40, deadline=None)
@given(m=dims, r=dims, n=dims, p=dims, seed=st.integers(0, 10_000))
def test_matmul_transpose_and_norm_match_dense(m, r, n, p, seed):
    fm, dense = random_fm(m, r, n, batch=(2,), seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    M = torch.randn(n, p, generator=g, dtype=torch.float64)
    L = torch.randn(p, m, generator=g, dtype=torch.float64)
    other, other_dense = random_fm(n, p, 3, seed=seed + 2)
    left = fm @ M
    assert isinstance(left, FactoredMatrix) and left.rdim == min(r, n)
    torch.testing.assert_close(left.dense(), dense @ M)
    torch.testing.assert_close((L @ fm).dense(), L @ dense)
    prod = fm @ other
    assert prod.rdim == min(r, p)
    torch.testing.assert_close(prod.dense(), dense @ other_dense)
    torch.testing.assert_close(fm.T.dense(), dense.transpose(-1, -2))
    v = torch.randn(n, generator=g, dtype=torch.float64)
    torch.testing.assert_close(fm @ v, dense @ v)
    u = torch.randn(m, generator=g, dtype=torch.float64)
    torch.testing.assert_close(u @ fm, u @ dense)
    torch.testing.assert_close(fm.norm(), torch.linalg.matrix_norm(dense))
    assert fm.shape == dense.shape


@settings(max_examples=40, deadline=None)
@given(m=st.integers(1, 9), r=dims, seed=st.integers(0, 10_000))
def test_eigenvalues_match_dense_nonzero_ones(m, r, seed):
    fm, dense = random_fm(m, r, m, seed=seed)
    fact = fm.eigenvalues
    assert fact.shape == (r,)
    match_multisets(nonzero(fact), nonzero(torch.linalg.eigvals(dense)), tol=1e-4)


def test_eigenvalues_batched_fp32():
    fm, dense = random_fm(30, 4, 30, batch=(2, 3), seed=3)
    fm = fm.to(torch.float32)
    fact = fm.eigenvalues
    ref = torch.linalg.eigvals(dense)
    for i in range(2):
        for j in range(3):
            match_multisets(fact[i, j].to(torch.complex128), nonzero(ref[i, j], 1e-5), 1e-4)


def test_eigenvalues_need_square():
    fm, _ = random_fm(3, 2, 4)
    with pytest.raises(QkovError, match="square"):
        _ = fm.eigenvalues


@settings(max_examples=30, deadline=None)
@given(m=dims, r=dims, n=dims, seed=st.integers(0, 10_000))
def test_svd_and_rank_match_dense(m, r, n, seed):
    fm, dense = random_fm(m, r, n, batch=(2,), seed=seed)
    U, S, Vh = fm.svd()
    k = min(m, n, r)
    assert U.shape == (2, m, k) and S.shape == (2, k) and Vh.shape == (2, k, n)
    torch.testing.assert_close(U @ torch.diag_embed(S) @ Vh, dense)
    torch.testing.assert_close(S, torch.linalg.svdvals(dense)[:, :k])
    torch.testing.assert_close(U.transpose(-1, -2) @ U, torch.eye(k, dtype=U.dtype).expand(2, k, k))
    assert torch.equal(fm.rank, torch.linalg.matrix_rank(dense))


def test_rank_of_rank_deficient_product():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(10, 5, generator=g, dtype=torch.float64)
    A[:, 3:] = 0  # only 3 of 5 inner directions used
    fm = FactoredMatrix(A, torch.randn(5, 8, generator=g, dtype=torch.float64))
    assert fm.rank == 3 == int(torch.linalg.matrix_rank(fm.dense()))


def test_indexing_matches_dense():
    fm, dense = random_fm(6, 3, 5, batch=(2, 4), seed=1)
    cases = [
        (1,),
        (1, 2),
        (Ellipsis, slice(1, 4), slice(None)),
        (0, slice(None), [0, 2, 5], slice(1, 3)),
        (Ellipsis, torch.tensor([4, 0]), slice(None, None, 2)),
        (1, 3, -1),
        (Ellipsis, 2, slice(None)),
        (Ellipsis, slice(None), 4),
        (0, 0, 2, 3),
    ]
    for key in cases:
        got = fm[key]
        want = dense[key]
        got = got.dense() if isinstance(got, FactoredMatrix) else got
        assert got.shape == want.shape, key
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(fm.rows(2, 4).dense(), dense[..., 2:4, :])


def test_dense_refuses_big_products_unless_forced():
    fm = FactoredMatrix(torch.ones(300, 2), torch.ones(2, 300))
    with pytest.raises(QkovError, match="force=True"):
        fm.dense(limit=1000)
    assert fm.dense(limit=1000, force=True).shape == (300, 300)


def test_repr_scalar_and_errors():
    fm, dense = random_fm(4, 2, 5, batch=(3,))
    assert "shape=[3, 4, 5]" in repr(fm) and "rdim=2" in repr(fm)
    torch.testing.assert_close((2.5 * fm).dense(), 2.5 * dense)
    torch.testing.assert_close((-fm).dense(), -dense)
    with pytest.raises(QkovError, match="inner dims"):
        FactoredMatrix(torch.ones(3, 2), torch.ones(3, 2))
    with pytest.raises(QkovError, match="too many"):
        fm[0, 0, 0, 0]
