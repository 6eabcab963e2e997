"""A head's circuit eigenvalues, from d_head x d_head products (never vocab x vocab): the QK and
OV spectra, Sum(lambda)/Sum(|lambda|) (copying, token matching), and the OV statistics record."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from qkov.circuits import (
    CHUNK_ELEMENTS,
    cached,
    check_head,
    folded,
    is_cached,
    ov_circuit,
    token_embedding,
)
from qkov.data.tokenizer import known_ids
from qkov.errors import QkovError
from qkov.factored import FactoredMatrix
from qkov.model import AttnOnlyTransformer, Transformer
from qkov.rotary import relative_rotation


def _embedding_grams(model: Transformer, side: str) -> dict[str, Tensor]:
    """Of E = token_embedding(model) [d_vocab, d_model], the d_model-sized products the token
    circuits' spectra need (fp32 or wider), formed once per model and side: for "qk" E^T E
    and E^T 1, for "ov" W_U E and W_U 1 (each a d_vocab-long matmul: 1.2 s at 1B)."""
    m = folded(model)
    E = token_embedding(m)

    def make() -> dict[str, Tensor]:
        Ew = _wide(E)
        if side == "qk":
            return {"EE": Ew.T @ Ew, "E1": Ew.sum(0)}
        Uw = _wide(m.W_U.detach())
        return {"UE": Uw @ Ew, "U1": Uw.sum(1)}

    return cached(m, f"embedding_grams_{side}", make, E, *([m.W_U] if side == "ov" else []))


def _wide(t: Tensor) -> Tensor:
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


def qk_eigenvalues(
    model: Transformer, layer: int, head: int, offset: int = 0, gram: bool | None = True
) -> Tensor:
    """Nonzero spectrum [d_head] (complex) of the token QK circuit `qk_circuit(model, layer,
    head, offset=offset)`, from the d_head x d_head (E W_K + b_K)^T (E W_Q + b_Q) R_offset.
    Same eigenvalues as `qk_circuit(...).eigenvalues` up to float rounding.

    gram=True: expanded through E^T E and E^T 1 (formed once per model, d_vocab * d_model^2:
    7.8 s at 128k tokens and d_model 2048): then d_model^2 * d_head per head, never a
    d_vocab-sized product; for many heads. gram=False: from this head's own E W_K and E W_Q
    (2 d_vocab * d_model * d_head: 0.8 s there); for one head. None: the gram if it is
    formed already, else the head's own products (the explorer's head panel)."""
    check_head(model, layer, head)
    m = folded(model)
    w = m.weights()
    W_Q, W_K = _wide(w["W_Q"][layer, head]), _wide(w["W_K"][layer, head])
    if gram is None:
        gram = is_cached(m, "embedding_grams_qk", token_embedding(m))
    if gram:
        g = _embedding_grams(m, "qk")
        M = W_K.T @ g["EE"] @ W_Q  # [d_head, d_head]
    else:
        E = _wide(token_embedding(m))
        M = (E @ W_K).T @ (E @ W_Q)
    if m.cfg.bias:
        b_Q, b_K = _wide(w["b_Q"][layer, head]), _wide(w["b_K"][layer, head])
        E1 = g["E1"] if gram else E.sum(0)
        kE1, qE1 = W_K.T @ E1, E1 @ W_Q  # [d_head]
        M = M + torch.outer(kE1, b_Q) + torch.outer(b_K, qE1)
        M = M + m.cfg.d_vocab * torch.outer(b_K, b_Q)
    c = m.cfg
    if c.positional == "rotary" and offset:
        R = relative_rotation(c, offset)
        M = M @ R.to(device=M.device, dtype=M.dtype)
    return torch.linalg.eigvals(M)


# ---------------------------------------------------------------------- OV eigenvalues
def eigenvalue_score(eigenvalues: Tensor) -> float:
    """Sum(lambda) / sum(|lambda|) using real parts in the numerator: in [-1, 1].

    Of an OV circuit (`ov_eigenvalue_score`): near 1 the circuit mostly raises what it
    reads (the paper's copying eigenvalues), near -1 it suppresses it. Of a QK term: near 1
    it matches tokens. (The behavioural copying score is `qkov.heads.copying_score`.)"""
    total = float(eigenvalues.abs().sum())
    if total == 0.0:
        return float("nan")
    return float(eigenvalues.real.sum()) / total


def ov_eigenvalues(model: AttnOnlyTransformer, layer: int, head: int) -> Tensor:
    """Nonzero spectrum [d_head] (complex) of the OV circuit W_E W_OV W_U (`ov_circuit`).

    Same nonzero eigenvalues as the d_model x d_model W_OV W_U W_E; computed from the even
    smaller d_head x d_head W_O W_U (W_E W_V + b_V), with W_U W_E and W_U 1 formed once per
    model, never the vocab x vocab matrix (nor a d_vocab-sized product per head)."""
    check_head(model, layer, head)
    m = folded(model)
    w, g = m.weights(), _embedding_grams(m, "ov")
    W_O, W_V = _wide(w["W_O"][layer, head]), _wide(w["W_V"][layer, head])
    M = W_O @ g["UE"] @ W_V  # [d_head, d_head]
    if m.cfg.bias:
        M = M + torch.outer(W_O @ g["U1"], _wide(w["b_V"][layer, head]))
    return torch.linalg.eigvals(M)


@torch.no_grad()
def top1_self_fraction(
    circuit: FactoredMatrix,
    chunk_size: int | None = None,
    rows: Tensor | None = None,
    known: Tensor | None = None,
) -> float:
    """Fraction of rows i of a square circuit whose largest entry is (strictly) column i.

    For an OV circuit: the fraction of tokens whose own logit is the top-1 output when the
    head attends to them. rows: an ESTIMATE over only these row ids (a seeded sample,
    `qkov.trigrams.sample_tokens`; each row still compared over every column); None: every
    row, exact. known [n] bool: the ids that count, as rows and as rivals (a vocabulary
    padded past its tokenizer: `qkov.data.tokenizer.known_ids`); None: all. Rows are formed
    chunk_size at a time (default: 16 MiB of fp32), so memory stays O(chunk_size * d_vocab).
    With rows, circuit may hold those rows alone, in their order ([len(rows), n], fewer
    than n: `ov_circuit(..., sources=rows)`)."""
    n = circuit.shape[-1]
    only_rows = rows is not None and circuit.ndim == 2 and circuit.shape[0] == len(rows) < n
    if circuit.ndim != 2 or (circuit.shape[0] != n and not only_rows):
        raise QkovError(
            f"top1_self_fraction needs one square matrix (or its `rows` alone), got "
            f"{list(circuit.shape)}"
        )
    ids = torch.arange(n) if rows is None else rows.cpu()
    at = torch.arange(len(ids)) if only_rows else ids  # where each id's row is in circuit.A
    chunk = chunk_size or max(1, CHUNK_ELEMENTS // n)
    if chunk < 1:
        raise QkovError(f"chunk_size must be >= 1, got {chunk_size}")
    hits = 0
    keep = torch.ones(len(ids), dtype=torch.bool) if known is None else known.cpu()[ids]
    ids, at = ids[keep], at[keep]  # padding ids: no text holds them, as rows or rivals
    for start in range(0, ids.numel(), chunk):
        part = ids[start : start + chunk].to(circuit.device)  # [c] row ids
        block = (circuit.A[at[start : start + chunk].to(circuit.device)] @ circuit.B).float()
        if known is not None:
            block[:, ~known.to(block.device)] = float("-inf")
        idx = torch.arange(part.numel(), device=block.device)
        own = block[idx, part].clone()
        block[idx, part] = float("-inf")
        hits += int((own > block.max(dim=-1).values).sum())
    return hits / max(1, ids.numel())


@dataclass
class OVStatistics:
    """The OV circuit's eigenvalues, their Sum(lambda)/Sum(|lambda|), and its top-1 fraction."""

    layer: int
    head: int
    eigenvalues: Tensor  # [d_head] complex
    eigenvalue_score: float  # sum(lambda) / sum(|lambda|)
    top1_fraction: float  # tokens whose own logit is top-1 in their OV row

    def __repr__(self) -> str:
        return (
            f"OVStatistics(L{self.layer}H{self.head}, "
            f"eigenvalue_score={self.eigenvalue_score:+.3f}, "
            f"top1_fraction={self.top1_fraction:.3f})"
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "layer": self.layer,
            "head": self.head,
            "eigenvalue_score": self.eigenvalue_score,
            "top1_fraction": self.top1_fraction,
            "eigenvalues": [[float(z.real), float(z.imag)] for z in self.eigenvalues],
        }


@torch.no_grad()
def ov_statistics(
    model: AttnOnlyTransformer,
    layer: int,
    head: int,
    chunk_size: int | None = None,
    rows: Tensor | None = None,
    W_OU: Tensor | None = None,
) -> OVStatistics:
    """OV eigenvalues, their Sum(lambda)/Sum(|lambda|) and the top-1 self fraction of head
    (layer, head); rows: the top-1 fraction over only these tokens (an estimate,
    `top1_self_fraction`). A vocabulary padded past its tokenizer counts only the
    tokenizer's ids (no text holds the others), as skip-trigrams do. W_OU: as `ov_circuit`."""
    V = model.cfg.d_vocab
    sampled = rows is not None and len(rows) < V  # the rows alone: their cost, not d_vocab's
    circuit = ov_circuit(model, layer, head, sources=rows if sampled else None, W_OU=W_OU)
    eig = ov_eigenvalues(model, layer, head)
    known = known_ids(V, getattr(model, "tokenizer", None))
    return OVStatistics(
        layer=layer,
        head=head,
        eigenvalues=eig,
        eigenvalue_score=eigenvalue_score(eig),
        top1_fraction=top1_self_fraction(circuit, chunk_size, rows, known),
    )


def ov_statistics_all(
    model: AttnOnlyTransformer, chunk_size: int | None = None
) -> list[OVStatistics]:
    """ov_statistics for every head, layer-major."""
    return [
        ov_statistics(model, l, h, chunk_size)
        for l in range(model.cfg.n_layers)
        for h in range(model.cfg.n_heads)
    ]


# Names from before "copying" meant only the behavioural score (kept for existing code).
OVCopying = OVStatistics
ov_copying = ov_statistics
ov_copying_all = ov_statistics_all
