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

VIRTUAL_CHUNK = 256  # virtual heads whose d_head x d_head product is formed at once


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
def virtual_head_ov(model: Transformer, top: int | None = None) -> list[VirtualHeadOV]:
    """Every two-head virtual head (l0 < l1) with its OV Σλ/Σ|λ| and V-composition score,
    highest composition first (top: only the `top` highest; None: every pair). The spectrum
    is that of the d_head x d_head W_O^{h1} W_U E W_V^{h0} W_O^{h0} W_V^{h1}, never the vocab
    x vocab circuit (E = token_embedding; weights folded, biases and MLPs between the heads
    left out). Pairs are taken VIRTUAL_CHUNK at a time: every pair at once was [N d_head]^2
    twice (N = n_layers n_heads; 16 GB at TinyLlama-1.1B's 704 heads, killed)."""
    from qkov.composition import pair_scores

    m = folded(model)
    w, E = m.weights(), token_embedding(m)
    wide = lambda t: t.float() if t.dtype in (torch.bfloat16, torch.float16) else t  # noqa: E731
    # The circuit is A B with A = E W_V^{h0} W_O^{h0} W_V^{h1}, B = W_O^{h1} W_U, and its
    # nonzero spectrum is that of B A = W_O^{h1} (W_U E) W_V^{h0} W_O^{h0} W_V^{h1}:
    # W_U E [d_model, d_model] is formed once (d_vocab * d_model^2), each pair costs
    # 2 d_head^2 d_model.
    cfg = m.cfg
    UE = wide(w["W_U"]) @ wide(E)  # [d_model, d_model]
    ov = FactoredMatrix(w["W_V"], w["W_O"])  # [n_layers, n_heads, d_model, d_model]
    v_comp = pair_scores(ov, ov)  # [l0, h0, l1, h1], every pair at once
    H = cfg.n_heads
    pairs = [
        (l0 * H + h0, l1 * H + h1)
        for l0 in range(cfg.n_layers)
        for h0 in range(H)
        for l1 in range(l0 + 1, cfg.n_layers)
        for h1 in range(H)
    ]
    if not pairs:
        return []
    a_all, b_all = (torch.tensor(x) for x in zip(*pairs, strict=True))
    scores = v_comp.reshape(len(v_comp) * H, -1)[a_all, b_all]  # [pairs]
    order = torch.sort(-scores, stable=True).indices[:top]  # ties keep the layer order
    pairs = [pairs[i] for i in order.tolist()]
    score = dict(zip(pairs, scores[order].tolist(), strict=True))
    W_O = wide(w["W_O"]).flatten(0, 1)  # [N, d_head, d_model]
    W_V = wide(w["W_V"]).flatten(0, 1)  # [N, d_model, d_head]
    OUE = W_O @ UE  # [N, d_head, d_model]: W_O^{n} W_U E
    out = []
    for start in range(0, len(pairs), VIRTUAL_CHUNK):
        chunk = pairs[start : start + VIRTUAL_CHUNK]
        n0, n1 = (torch.tensor(x) for x in zip(*chunk, strict=True))
        BA = (OUE[n1] @ W_V[n0]) @ (W_O[n0] @ W_V[n1])  # [pairs, d_head, d_head]
        eig = torch.linalg.eigvals(BA)  # [pairs, d_head]
        for i, (a, b) in enumerate(chunk):
            out.append(
                VirtualHeadOV(
                    heads=(divmod(a, H), divmod(b, H)),
                    v_composition=score[(a, b)],
                    eigenvalue_score=eigenvalue_score(eig[i]),
                )
            )
    return out
