"""Token-split skip-trigrams `[ab] ... [a] -> [b]` (the paper's " Ralph" ... " R" ->
"alph"): a head completes a word the tokenizer split by copying the rest of a whole-word
token seen earlier. The candidates are a property of the vocabulary (the triples of token
texts that split that way); each is scored as `qkov.trigrams.skip_trigrams` scores any
trigram, from the same factored circuits."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from qkov.circuits import check_head
from qkov.errors import QkovError
from qkov.model import AttnOnlyTransformer
from qkov.trigrams import HeadScorer, SkipTrigram, allowed_tokens, sample_tokens, token_str


@dataclass(frozen=True)
class SplitTokenTrigrams:
    """A head's token-split skip-trigrams `[ab] ... [a] -> [b]` (source " Ralph",
    destination " R", out "alph"): the head completes a word the tokenizer split, by
    copying the rest of a whole-word token seen earlier. n_candidates: triples of allowed
    tokens whose strings split that way (a property of the vocabulary); n_favoured: those
    this head favours (it attends to the source more than average, a > 0, and raises the
    out above average, o > 0); trigrams: the k best by `skip_trigrams`' score."""

    layer: int
    head: int
    n_candidates: int
    n_favoured: int
    trigrams: list[SkipTrigram]

    def __repr__(self) -> str:
        return (
            f"SplitTokenTrigrams(L{self.layer}H{self.head}, {self.n_favoured} of "
            f"{self.n_candidates} favoured, top {len(self.trigrams)})"
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "layer": self.layer,
            "head": self.head,
            "n_candidates": self.n_candidates,
            "n_favoured": self.n_favoured,
            "trigrams": [t.to_dict() for t in self.trigrams],
        }


def sample_candidates(candidates: Tensor, n: int | None, seed: int = 0) -> Tensor:
    """A seeded sample of n rows of `split_token_candidates` [n_candidates, 3] (in their
    order), or all of them for n None or n >= n_candidates."""
    if candidates.shape[0] == 0:
        return candidates
    return candidates[sample_tokens(candidates.shape[0], n, seed)]


def split_token_candidates(model: AttnOnlyTransformer, keep: Tensor | None = None) -> Tensor:
    """[n, 3] (source, destination, out) ids with text(source) == text(destination) +
    text(out), all three non-empty and allowed by `keep` ([d_vocab] bool, or None for all).
    Reads every token's text once (model.tokenizer; without one there are none: '[7]' never
    splits into two ids' texts); O(d_vocab * token length) dictionary look-ups."""
    if model.tokenizer is None:
        return torch.empty(0, 3, dtype=torch.long)
    V = model.cfg.d_vocab
    text = [token_str(model, i) for i in range(V)]
    ok = [True] * V if keep is None else keep.tolist()
    ids: dict[str, int] = {}
    for i in range(V):  # the first id of each text (duplicates decode alike)
        if ok[i] and text[i] and not (text[i].startswith("[") and text[i] == f"[{i}]"):
            ids.setdefault(text[i], i)
    rows = []
    for s, whole in ((i, t) for t, i in ids.items()):
        for cut in range(1, len(whole)):
            d, t = ids.get(whole[:cut]), ids.get(whole[cut:])
            if d is not None and t is not None:
                rows.append((s, d, t))
    return torch.tensor(rows, dtype=torch.long).reshape(-1, 3)


_SPLIT_CHUNK = 256  # candidates per step of split_token_trigrams: [256, d_model] blocks


@torch.no_grad()
def split_token_trigrams(
    model: AttnOnlyTransformer,
    layer: int,
    head: int,
    k: int = 10,
    min_count: int | None = None,
    candidates: Tensor | None = None,
) -> SplitTokenTrigrams:
    """The head's token-split skip-trigrams (see `SplitTokenTrigrams`), ranked by the score
    of `skip_trigrams` (sigmoid(attention) * boost, from the same factored circuits). Exact
    for a 1-layer head; for later heads the direct path only, as `skip_trigrams`.
    min_count: only tokens seen that often in training (`allowed_tokens`). candidates: the
    `split_token_candidates(model, allowed_tokens(model, min_count))` of this model, when a
    caller scores many heads (reading the vocabulary's texts once, not per head)."""
    if k < 1:
        raise QkovError(f"k must be >= 1, got {k}")
    check_head(model, layer, head)
    if candidates is None:
        candidates = split_token_candidates(model, allowed_tokens(model, min_count))
    if candidates.shape[0] == 0:
        return SplitTokenTrigrams(layer, head, 0, 0, [])
    sc = HeadScorer(model, layer, head)
    cand = candidates.to(sc.device)
    a, o = torch.empty(2, cand.shape[0], dtype=sc.dtype, device=sc.device)
    for i in range(0, cand.shape[0], _SPLIT_CHUNK):  # [c, d_model] blocks that stay in cache
        s, d, t = cand[i : i + _SPLIT_CHUNK].unbind(1)
        E_s = sc.E[s]  # gathered once: a gather costs as much as the products
        key = sc.k_centred(E_s, embedded=True)
        a[i : i + _SPLIT_CHUNK] = (sc.q_rows(d) * key).sum(-1) * sc.scale  # centred attention
        v_s = sc.v(E_s, embedded=True)  # [c, d_head]
        boost = ((v_s @ sc.W_O) * sc.W_U.T[t]).sum(-1) - v_s @ sc.OU_mean  # centred
        o[i : i + _SPLIT_CHUNK] = boost
    score = torch.sigmoid(a) * o
    best = score.topk(min(k, score.numel())).indices
    trigrams = [sc.trigram(*(int(x) for x in cand[i])) for i in best.tolist()]
    return SplitTokenTrigrams(
        layer=layer,
        head=head,
        n_candidates=int(cand.shape[0]),
        n_favoured=int(((a > 0) & (o > 0)).sum()),
        trigrams=sorted(trigrams, key=lambda x: -x.score),
    )
