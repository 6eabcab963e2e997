"""FactoredMatrix: a low-rank product A @ B kept factored.

The circuits of the framework are products like `W_E W_V W_O W_U` (vocab x vocab, rank <=
d_head). Forming them costs vocab^2 memory; almost every question about them (eigenvalues,
singular values, norms, single rows) is answered by the small factors instead.

    A [..., m, r] @ B [..., r, n]  ->  [..., m, n]   (leading dims: batch, e.g. [layer, head])

`r` is the inner dimension (`rdim`), an upper bound on the rank.

Half-precision factors (bf16, fp16: public checkpoints kept in their dtype) are widened to
fp32 for spectra and norms: torch has no bf16 eig/QR on the CPU, and a bf16 sum of squares
loses the digits these numbers need. Products and indexing keep the factors' dtype.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from qkov.errors import QkovError

# Default refusal limit for `.dense()`: 2**26 elements (256 MiB in fp32).
DENSE_LIMIT = 2**26

Index = Any  # int | slice | list[int] | Tensor | Ellipsis, or a tuple of them


def _wide(t: Tensor) -> Tensor:
    """t in fp32 if it is half precision (bf16, fp16), else unchanged."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


class FactoredMatrix:
    """The product A @ B, never formed unless asked: A [..., m, r], B [..., r, n]."""

    def __init__(self, A: Tensor, B: Tensor):
        if A.ndim < 2 or B.ndim < 2:
            raise QkovError(
                f"FactoredMatrix needs matrices, got A {list(A.shape)} and B {list(B.shape)}"
            )
        if A.shape[-1] != B.shape[-2]:
            raise QkovError(
                f"FactoredMatrix inner dims disagree: A {list(A.shape)} has {A.shape[-1]} "
                f"columns but B {list(B.shape)} has {B.shape[-2]} rows"
            )
        try:
            batch = torch.broadcast_shapes(A.shape[:-2], B.shape[:-2])
        except RuntimeError:
            raise QkovError(
                f"FactoredMatrix batch dims do not broadcast: A {list(A.shape)}, B {list(B.shape)}"
            ) from None
        # Equal batch shapes on both sides keep indexing simple (expand is a free view).
        self.A = A.expand(*batch, *A.shape[-2:])
        self.B = B.expand(*batch, *B.shape[-2:])

    # ------------------------------------------------------------------ shape
    @property
    def shape(self) -> torch.Size:
        """[..., m, n]: the shape of the product A @ B."""
        return torch.Size((*self.A.shape[:-1], self.B.shape[-1]))

    @property
    def ndim(self) -> int:
        return self.A.ndim

    @property
    def rdim(self) -> int:
        """Inner dimension r: an upper bound on the rank."""
        return self.A.shape[-1]

    @property
    def dtype(self) -> torch.dtype:
        return self.A.dtype

    @property
    def device(self) -> torch.device:
        return self.A.device

    def __repr__(self) -> str:
        return (
            f"FactoredMatrix(shape={list(self.shape)}, rdim={self.rdim}, "
            f"dtype={str(self.dtype).removeprefix('torch.')})"
        )

    # ------------------------------------------------------------------ algebra
    @property
    def T(self) -> FactoredMatrix:
        """Transpose of the matrix dims: (AB)^T = B^T A^T."""
        return FactoredMatrix(self.B.transpose(-1, -2), self.A.transpose(-1, -2))

    def __matmul__(self, other: Tensor | FactoredMatrix) -> FactoredMatrix | Tensor:
        if isinstance(other, FactoredMatrix):
            # (A1 B1)(A2 B2) = A1 (B1 A2) B2; the r1 x r2 middle joins the side whose inner
            # dim it keeps smaller.
            mid = self.B @ other.A
            if self.rdim <= other.rdim:
                return FactoredMatrix(self.A, mid @ other.B)
            return FactoredMatrix(self.A @ mid, other.B)
        if not isinstance(other, Tensor):
            return NotImplemented
        if other.ndim == 1:  # matrix @ vector -> vector [..., m]
            return (self.A @ (self.B @ other[:, None])).squeeze(-1)
        if other.shape[-2] < self.rdim:
            # Inner dim n < r: forming A @ B [m, n] is no bigger than A and lowers the rank bound.
            return FactoredMatrix(self.A @ self.B, other)
        return FactoredMatrix(self.A, self.B @ other)

    def __rmatmul__(self, other: Tensor) -> FactoredMatrix | Tensor:
        if not isinstance(other, Tensor):
            return NotImplemented
        if other.ndim == 1:  # vector @ matrix -> vector [..., n]
            return ((other[None] @ self.A) @ self.B).squeeze(-2)
        if other.shape[-1] < self.rdim:
            return FactoredMatrix(other, self.A @ self.B)
        return FactoredMatrix(other @ self.A, self.B)

    def __mul__(self, scalar: float) -> FactoredMatrix:
        if isinstance(scalar, Tensor) and scalar.ndim > 0:
            return NotImplemented
        return FactoredMatrix(self.A * scalar, self.B)

    __rmul__ = __mul__

    def __neg__(self) -> FactoredMatrix:
        return FactoredMatrix(-self.A, self.B)

    # ------------------------------------------------------------------ spectra and norms
    @property
    def eigenvalues(self) -> Tensor:
        """Eigenvalues [..., r] (complex) of the square matrix AB, via the r x r product BA.

        AB and BA share their nonzero eigenvalues, so this gives all nonzero eigenvalues of
        AB (plus zeros when the rank is below r) without forming the m x m matrix."""
        if self.shape[-1] != self.shape[-2]:
            raise QkovError(f"eigenvalues need a square matrix, got shape {list(self.shape)}")
        return torch.linalg.eigvals(_wide(self.B) @ _wide(self.A))

    def svd(self) -> tuple[Tensor, Tensor, Tensor]:
        """Thin SVD through QR of the factors: AB = U @ diag(S) @ Vh.

        A = Q_A R_A and B^T = Q_B R_B, so AB = Q_A (R_A R_B^T) Q_B^T and only the small
        core R_A R_B^T is decomposed. Returns U [..., m, k], S [..., k], Vh [..., k, n]
        with k = min(m, n, r), singular values descending."""
        Q_A, R_A = torch.linalg.qr(_wide(self.A))
        Q_B, R_B = torch.linalg.qr(_wide(self.B).transpose(-1, -2))
        U_core, S, Vh_core = torch.linalg.svd(R_A @ R_B.transpose(-1, -2), full_matrices=False)
        return Q_A @ U_core, S, Vh_core @ Q_B.transpose(-1, -2)

    @property
    def S(self) -> Tensor:
        """Singular values [..., min(m, n, r)], descending."""
        return self.svd()[1]

    def norm(self) -> Tensor:
        """Frobenius norm [...] without forming AB: ||AB||_F^2 = sum((A^T A) * (B B^T))."""
        A, B = _wide(self.A), _wide(self.B)
        gram_A = A.transpose(-1, -2) @ A  # [..., r, r]
        gram_B = B @ B.transpose(-1, -2)  # [..., r, r]
        return (gram_A * gram_B).sum(dim=(-1, -2)).clamp_min(0).sqrt()

    @property
    def rank(self) -> int | Tensor:
        """Numerical rank (as torch.linalg.matrix_rank: S > max(m, n) * eps * S_max).

        An int for a single matrix, a long tensor [...] for a batch."""
        S = self.S
        eps = torch.finfo(S.dtype).eps
        tol = max(self.shape[-2], self.shape[-1]) * eps * S.amax(dim=-1, keepdim=True)
        ranks = (S > tol).sum(dim=-1)
        return int(ranks) if ranks.ndim == 0 else ranks

    def dense(self, force: bool = False, limit: int = DENSE_LIMIT) -> Tensor:
        """The product A @ B [..., m, n]; refuses above `limit` elements unless force=True."""
        numel = self.shape.numel()
        if numel > limit and not force:
            raise QkovError(
                f"refusing to form a dense {list(self.shape)} matrix ({numel:,} elements > "
                f"limit {limit:,}): slice rows first, or pass force=True"
            )
        return self.A @ self.B

    # ------------------------------------------------------------------ indexing
    def __getitem__(self, key: Index) -> FactoredMatrix | Tensor:
        """Index batch dims, rows (of A) and columns (of B), numpy style.

        Slices, lists and tensors keep the product factored; an integer row or column
        index returns a dense vector (row i of AB is A[i] @ B, cheap)."""
        nb = self.ndim - 2
        key = key if isinstance(key, tuple) else (key,)
        n_ell = sum(k is Ellipsis for k in key)
        if n_ell > 1:
            raise QkovError("an index can hold at most one Ellipsis (...)")
        if n_ell:
            i = next(j for j, k in enumerate(key) if k is Ellipsis)
            fill = (slice(None),) * (self.ndim - (len(key) - 1))
            key = key[:i] + fill + key[i + 1 :]
        if len(key) > self.ndim:
            raise QkovError(f"too many indices ({len(key)}) for shape {list(self.shape)}")
        key = key + (slice(None),) * (self.ndim - len(key))
        batch, row, col = key[:nb], key[nb], key[nb + 1]
        A, B = self.A, self.B
        if nb:
            A = A[(*batch, slice(None), slice(None))]
            B = B[(*batch, slice(None), slice(None))]
        # An integer index becomes a length-1 list (keeps the dim), squeezed after the product.
        A = A[..., [row] if isinstance(row, int) else row, :]
        B = B[..., :, [col] if isinstance(col, int) else col]
        if isinstance(row, int) or isinstance(col, int):
            out = A @ B
            if isinstance(row, int):
                out = out.squeeze(-2)
            if isinstance(col, int):
                out = out.squeeze(-1)
            return out
        return FactoredMatrix(A, B)

    def rows(self, start: int, stop: int) -> FactoredMatrix:
        """Rows start:stop of every matrix in the batch (a chunk of the product)."""
        return FactoredMatrix(self.A[..., start:stop, :], self.B)

    def to(self, *args: Any, **kwargs: Any) -> FactoredMatrix:
        return FactoredMatrix(self.A.to(*args, **kwargs), self.B.to(*args, **kwargs))
