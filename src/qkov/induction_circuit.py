"""The induction circuit at one moment of training: the sequel paper's view of the phase
change, as numbers a training run logs and a report draws.

Given the best induction head (by the standard probe), its previous-token partner is the
previous-token head its keys read most (`qkov.composition.choose_partner`: of the earlier
heads above the random baseline of K-composition, the previous-token heads first; the rule
`qkov.classification` names partners by). Three weight statistics follow the circuit as it
forms:
  k_composition:   K-composition score partner -> induction head (`composition_score`);
  qk_eigenvalue:   Sum(lambda)/Sum(|lambda|) of the induction QK term through the partner
                   (`qkov.circuits.induction_qk_term`): near +1 once keys match tokens;
  ov_eigenvalue:   the same statistic of the induction head's OV circuit: near +1 once it
                   copies.
They are computed from the weights alone (folded, as every circuit), so a snapshot kept by
`--keep-checkpoints` gives the same numbers the training probe logged at its step."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from qkov.circuits import W_OV, W_QK, induction_qk_term, ov_circuit
from qkov.classification import Thresholds
from qkov.composition import baseline_stats, baseline_z, choose_partner, composition_score
from qkov.eigenvalues import eigenvalue_score
from qkov.model import Transformer

KEYS = (
    "induction_head",
    "partner_head",
    "k_composition",
    "qk_eigenvalue",
    "ov_eigenvalue",
)


@torch.no_grad()
def induction_circuit(
    model: Transformer, induction_scores: Tensor, previous_token_scores: Tensor
) -> dict[str, object]:
    """The statistics above for the head with the best score among layers >= 1.

    induction_scores, previous_token_scores [n_layers, n_heads] (e.g. from the standard
    probe; the second picks the partner, with `Thresholds`' defaults). Heads are named
    "L{layer}H{head}". A model with fewer than 2 layers has no such circuit: NaN values and
    None names."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    if L < 2:
        return {
            "induction_head": None,
            "partner_head": None,
            "k_composition": math.nan,
            "qk_eigenvalue": math.nan,
            "ov_eigenvalue": math.nan,
        }
    later = induction_scores[1:].float().flatten()
    best = int(later.argmax())
    layer, head = 1 + best // H, best % H
    OV, QK = W_OV(model), W_QK(model)
    k_scores = torch.full((layer, H), -math.inf)
    for l0 in range(layer):
        for h0 in range(H):
            k_scores[l0, h0] = composition_score(OV[l0, h0], QK[layer, head].T)
    mean, std = baseline_stats(model.cfg.d_model, model.cfg.d_head)
    z = baseline_z(k_scores, mean["k"], std["k"])
    t = Thresholds()
    prev = previous_token_scores[:layer].float()
    l0, h0 = choose_partner(k_scores, z, prev, t.partner_z, t.previous_token)
    qk = induction_qk_term(model, layer, head, l0, h0)
    return {
        "induction_head": f"L{layer}H{head}",
        "partner_head": f"L{l0}H{h0}",
        "k_composition": float(k_scores[l0, h0]),
        "qk_eigenvalue": eigenvalue_score(qk.eigenvalues),
        "ov_eigenvalue": eigenvalue_score(ov_circuit(model, layer, head).eigenvalues),
    }
