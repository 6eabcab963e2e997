"""Virtual heads (V-composition): the OV circuit of a chain of two heads, h0 -> h1, ranked by
how much h1's value reads h0's output, with its Sum(lambda)/Sum(|lambda|)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qkov.circuits import folded, token_embedding
from qkov.eigenvalues import eigenvalue_score
from qkov.factored import FactoredMatrix
from qkov.model import Transformer
from qkov.paths import Chain


@dataclass
class VirtualHeadOV:
    """The OV circuit of virtual head h0 -> h1 (V-composition), W_E W_OV^{h0} W_OV^{h1} W_U
    [d_vocab (source), d_vocab (out)]: what h1 writes to the logits when it attends to a
    position where h0 attended to a source token. eigenvalue_score: its Σλ/Σ|λ|;
    v_composition: ||W_OV^{h0} W_OV^{h1}||_F / (||W_OV^{h0}||_F ||W_OV^{h1}||_F)."""

    heads: Chain  # ((l0, h0), (l1, h1)), l0 < l1
    v_composition: float
    eigenvalue_score: float

    @property
    def name(self) -> str:
        return ">".join(f"L{l}H{h}" for l, h in self.heads)

    def __repr__(self) -> str:
        return (
            f"VirtualHeadOV({self.name}, v_composition={self.v_composition:.3f}, "
            f"eigenvalue_score={self.eigenvalue_score:+.3f})"
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "heads": [list(lh) for lh in self.heads],
            "name": self.name,
            "v_composition": self.v_composition,
            "ov_eigenvalue_score": self.eigenvalue_score,
        }


@torch.no_grad()
def virtual_head_ov(model: Transformer) -> list[VirtualHeadOV]:
    """Every two-head virtual head (l0 < l1) with its OV Σλ/Σ|λ| and V-composition score,
    highest composition first. The spectrum is that of the d_head x d_head
    W_O^{h1} W_U E W_V^{h0} W_O^{h0} W_V^{h1}, never the vocab x vocab circuit (E =
    token_embedding; weights folded, biases and MLPs between the heads left out)."""
    from qkov.composition import pair_scores

    m = folded(model)
    w, E = m.weights(), token_embedding(m)
    wide = lambda t: t.float() if t.dtype in (torch.bfloat16, torch.float16) else t  # noqa: E731
    # The circuit is A B with A = E W_V^{h0} W_O^{h0} W_V^{h1}, B = W_O^{h1} W_U, and its
    # nonzero spectrum is that of B A = W_O^{h1} (W_U E) W_V^{h0} W_O^{h0} W_V^{h1}:
    # W_U E [d_model, d_model] is formed once (d_vocab * d_model^2), each pair costs d_model^2.
    cfg = m.cfg
    UE = wide(w["W_U"]) @ wide(E)  # [d_model, d_model]
    ov = FactoredMatrix(w["W_V"], w["W_O"])  # [n_layers, n_heads, d_model, d_model]
    v_comp = pair_scores(ov, ov)  # [l0, h0, l1, h1], every pair at once
    # B A = (W_O^{h1} W_U E W_V^{h0}) (W_O^{h0} W_V^{h1}): both factors for every pair of
    # heads from two [N d_head, d_model] x [d_model, N d_head] products (N = n_layers n_heads).
    N, r = cfg.n_layers * cfg.n_heads, cfg.d_head
    W_O = wide(w["W_O"]).reshape(N * r, cfg.d_model)  # rows: head n, then d_head
    W_V = wide(w["W_V"]).flatten(0, 1).transpose(0, 1).reshape(cfg.d_model, N * r)
    P = ((W_O @ UE) @ W_V).reshape(N, r, N, r)  # P[n1, :, n0] = W_O^{n1} W_U E W_V^{n0}
    Q = (W_O @ W_V).reshape(N, r, N, r)  # Q[n0, :, n1] = W_O^{n0} W_V^{n1}
    pairs = [
        (l0 * cfg.n_heads + h0, l1 * cfg.n_heads + h1)
        for l0 in range(cfg.n_layers)
        for h0 in range(cfg.n_heads)
        for l1 in range(l0 + 1, cfg.n_layers)
        for h1 in range(cfg.n_heads)
    ]
    out = []
    if pairs:
        n0, n1 = (torch.tensor(x) for x in zip(*pairs, strict=True))
        BA = P[n1, :, n0] @ Q[n0, :, n1]  # [pairs, d_head, d_head]
        eig = torch.linalg.eigvals(BA)  # [pairs, d_head]
        for i, (a, b) in enumerate(pairs):
            (l0, h0), (l1, h1) = divmod(a, cfg.n_heads), divmod(b, cfg.n_heads)
            out.append(
                VirtualHeadOV(
                    heads=((l0, h0), (l1, h1)),
                    v_composition=float(v_comp[l0, h0, l1, h1]),
                    eigenvalue_score=eigenvalue_score(eig[i]),
                )
            )
    return sorted(out, key=lambda v: -v.v_composition)
