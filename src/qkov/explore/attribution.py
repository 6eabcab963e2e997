"""Which paths push the next token: per position, the path-expansion terms' share of the
logit of one target token (the actual next token, or the model's top prediction at the
last position).

The page's view of `qkov.attribution.path_contributions`, the one attribution qkov has
(`qkov attribute` and the report show the same numbers): with attention patterns, norm
scales and MLP outputs frozen at the forward pass, the terms (direct path, each head,
virtual heads, MLP starts, a remainder past `max_order`) sum exactly to the logit."""

from __future__ import annotations

import torch
from torch import Tensor

from qkov.attribution import path_contributions
from qkov.model import Transformer

# Chains of more heads than this go into one exact remainder term (bounded work per request);
# on a large model the cut is lower, where analyze's budget puts it (`qkov.budget`).
MAX_ORDER = 2


def max_order(model: Transformer, n_tokens: int) -> int:
    """The cut of a request's path expansion: MAX_ORDER, or the attribution budget's lower
    one for a model as large as GPT-2 (`qkov.budget.attribution_max_order`)."""
    from qkov.budget import attribution_max_order

    fits = attribution_max_order(model.cfg, n_tokens)
    return MAX_ORDER if fits is None else min(MAX_ORDER, fits)


@torch.no_grad()
def next_token_attributions(
    model: Transformer, tokens: Tensor, targets: Tensor, k: int = 6
) -> list[dict[str, object]]:
    """tokens [pos], targets [pos] (the token whose logit is explained at each position) ->
    per position {"total": the logit of the target, "paths": the k terms with the largest
    |contribution| [{"name", "order", "logit"}], "rest": the other terms' sum}.
    total == sum(paths) + rest, to float rounding."""
    terms, share, _ = path_contributions(
        model, tokens[None], targets, max_order(model, tokens.shape[0])
    )
    total = share.sum(-1)  # [pos]
    out = []
    for i in range(tokens.shape[0]):
        order = share[i].abs().argsort(descending=True)[:k].tolist()
        paths = [
            {"name": terms[j].name, "order": terms[j].order, "logit": float(share[i, j])}
            for j in order
        ]
        rest = float(total[i]) - sum(p["logit"] for p in paths)
        out.append({"total": float(total[i]), "paths": paths, "rest": rest})
    return out
