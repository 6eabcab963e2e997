"""Knock-outs, the causal test of an induction head's previous-token partner: zero an
earlier head's output and see how much the induction head's score on a repeated probe
drops. It finds the partner also where the key reads it through an MLP, which the
weight-based K-composition score does not see. `qkov.classification` runs them for every
induction head it labels."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from qkov.heads import induction_score
from qkov.model import AttnOnlyTransformer
from qkov.reprs import num


@dataclass(frozen=True)
class KnockoutPartner:
    """An earlier head and the induction score of a later head with its output zeroed:
    `drop` = clean score - that score (large: the later head needs this one)."""

    layer: int
    head: int
    induction_score: float
    drop: float

    @property
    def name(self) -> str:
        return f"L{self.layer}H{self.head}"

    def __repr__(self) -> str:
        return (
            f"KnockoutPartner({self.name}, induction_score={num(self.induction_score)}, "
            f"drop={num(self.drop, '+.3f')})"
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@torch.no_grad()
def knockout_partners(
    model: AttnOnlyTransformer, layer: int, head: int, tokens: Tensor, half_len: int | Tensor
) -> tuple[KnockoutPartner, ...]:
    """Every head of an earlier layer, ranked by how much zeroing its output lowers the
    induction score of (layer, head) on tokens [batch, pos] ending in a repeated block of
    half_len: the causal test of an induction head's previous-token partner. It finds the
    partner also when the key reads it through an MLP, where the weight-based K-composition
    score (a product of the two heads' matrices) does not see it. One forward pass per
    earlier head; `knockouts` does several later heads with the same passes."""
    return knockouts(model, [(layer, head)], tokens, half_len)[(layer, head)]


@torch.no_grad()
def knockouts(
    model: AttnOnlyTransformer,
    heads: list[tuple[int, int]],
    tokens: Tensor,
    half_len: int | Tensor,
    candidates: list[tuple[int, int]] | None = None,
) -> dict[tuple[int, int], tuple[KnockoutPartner, ...]]:
    """`knockout_partners` of each of `heads` [(layer, head)], ranked among `candidates`
    (default: every head of a layer below the last of `heads`). One pass per candidate,
    shared by every later head (each reads its own pattern from it), begun at the
    candidate's layer from the clean stream and stopped at the last pattern needed."""
    wanted = sorted(set(heads))
    if not wanted:
        return {}
    layers = sorted({l for l, _ in wanted})
    if candidates is None:
        candidates = [(l0, h0) for l0 in range(layers[-1]) for h0 in range(model.cfg.n_heads)]
    streams: dict[str, Tensor] = {}  # resid_pre of each candidate's layer, clean

    def induction(hooks: dict, start: tuple[int, Tensor] | None = None) -> dict[int, Tensor]:
        found: dict[int, Tensor] = {}  # layer -> [head] induction scores

        def keep(x: Tensor, name: str) -> None:
            found[int(name.rsplit(".", 1)[1])] = induction_score(x, tokens, half_len)

        hooks |= {f"pattern.{l}": keep for l in layers}
        # the layers after the last pattern needed and the unembedding cannot change it
        model.run_with_hooks(tokens, hooks=hooks, start=start, stop=f"pattern.{layers[-1]}")
        return found

    def zero(h0: int):
        def hook(out: Tensor, name: str) -> Tensor:  # z: [batch, head, pos, d_head]
            out = out.clone()  # zero z of a head = zero its head_out (W_O is per head)
            out[:, h0] = 0
            return out

        return hook

    def save(x: Tensor, name: str) -> None:
        streams[name] = x

    clean = induction({f"resid_pre.{l0}": save for l0, _ in candidates})
    ranked: dict[tuple[int, int], list[KnockoutPartner]] = {hd: [] for hd in wanted}
    for l0, h0 in sorted({c for c in candidates if c[0] < layers[-1]}):
        knocked = induction({f"z.{l0}": zero(h0)}, start=(l0, streams[f"resid_pre.{l0}"]))
        for l, h in wanted:
            if l0 < l:
                score = float(knocked[l][h])
                ranked[(l, h)].append(KnockoutPartner(l0, h0, score, float(clean[l][h]) - score))
    return {hd: tuple(sorted(r, key=lambda p: -p.drop)) for hd, r in ranked.items()}
