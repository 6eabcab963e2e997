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
`--keep-checkpoints` gives the same numbers the training probe logged at its step.

The best head can change from one checkpoint to the next (before the phase change it is
whichever head scores 0.02); the sequel paper follows fixed heads. `head` and `partner` pin
them (`qkov forming --head L1H5 --partner L0H7`), and the record then also holds the pinned
head's own score, induction_head_score."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from qkov.circuits import W_OV, W_QK, induction_qk_term, ov_circuit
from qkov.classification import Thresholds
from qkov.composition import baseline_stats, baseline_z, choose_partner, composition_score
from qkov.config import ModelConfig
from qkov.eigenvalues import eigenvalue_score
from qkov.errors import QkovError
from qkov.model import Transformer

KEYS = (
    "induction_head",
    "partner_head",
    "k_composition",
    "qk_eigenvalue",
    "ov_eigenvalue",
)


Head = tuple[int, int]  # (layer, head)


def check_pinned(cfg: ModelConfig, head: Head | None, partner: Head | None) -> None:
    """A QkovError unless `head` is a head of a layer >= 1 of this shape and `partner` (if
    given, with a head) one of an earlier layer: an induction head reads its partner."""
    if partner is not None and head is None:
        raise QkovError("--partner needs --head: give the induction head whose partner it is")
    if head is not None and cfg.n_layers < 2:
        raise QkovError("--head: a model of one layer has no induction head to pin")
    heads = f"heads 0-{cfg.n_heads - 1}"
    if head is not None and not (1 <= head[0] < cfg.n_layers and 0 <= head[1] < cfg.n_heads):
        raise QkovError(
            f"--head L{head[0]}H{head[1]} is not a head this model can pin: give one of layers "
            f"1-{cfg.n_layers - 1} (an induction head reads an earlier layer), {heads}"
        )
    if partner is not None and not (0 <= partner[0] < head[0] and 0 <= partner[1] < cfg.n_heads):
        raise QkovError(
            f"--partner L{partner[0]}H{partner[1]} is not an earlier head than --head "
            f"L{head[0]}H{head[1]}: give one of layers 0-{head[0] - 1}, {heads}"
        )


@torch.no_grad()
def induction_circuit(
    model: Transformer,
    induction_scores: Tensor,
    previous_token_scores: Tensor,
    head: Head | None = None,
    partner: Head | None = None,
) -> dict[str, object]:
    """The statistics above for the head with the best score among layers >= 1, or for
    `head` (then also its score, induction_head_score).

    induction_scores, previous_token_scores [n_layers, n_heads] (e.g. from the standard
    probe; the second picks the partner, with `Thresholds`' defaults, unless `partner` is
    given). Heads are named "L{layer}H{head}". A model with fewer than 2 layers has no such
    circuit: NaN values and None names."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    check_pinned(model.cfg, head, partner)
    if L < 2:
        return {
            "induction_head": None,
            "partner_head": None,
            "k_composition": math.nan,
            "qk_eigenvalue": math.nan,
            "ov_eigenvalue": math.nan,
        }
    pinned = head is not None
    if head is None:
        best = int(induction_scores[1:].float().flatten().argmax())
        head = (1 + best // H, best % H)
    layer, h = head
    OV, QK = W_OV(model), W_QK(model)
    k_scores = torch.full((layer, H), -math.inf)
    for l0 in range(layer):
        for h0 in range(H):
            k_scores[l0, h0] = composition_score(OV[l0, h0], QK[layer, h].T)
    if partner is None:
        mean, std = baseline_stats(model.cfg.d_model, model.cfg.d_head)
        z = baseline_z(k_scores, mean["k"], std["k"])
        t = Thresholds()
        prev = previous_token_scores[:layer].float()
        partner = choose_partner(k_scores, z, prev, t.partner_z, t.previous_token)
    l0, h0 = partner
    qk = induction_qk_term(model, layer, h, l0, h0)
    out: dict[str, object] = {
        "induction_head": f"L{layer}H{h}",
        "partner_head": f"L{l0}H{h0}",
        "k_composition": float(k_scores[l0, h0]),
        "qk_eigenvalue": eigenvalue_score(qk.eigenvalues),
        "ov_eigenvalue": eigenvalue_score(ov_circuit(model, layer, h).eigenvalues),
    }
    if pinned:
        out["induction_head_score"] = float(induction_scores[layer, h])
    return out
