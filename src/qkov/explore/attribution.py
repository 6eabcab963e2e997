"""Which paths push the next token: per position, the path-expansion terms' share of the
logit of one target token (the actual next token, or the model's top prediction at the
last position).

The adapter between `qkov.circuits.path_expansion` and the explore page, kept in one
function so a packaged attribution can replace it. Exact: with attention patterns, norm
scales and MLP outputs frozen at the forward pass, the terms (direct path, each head,
virtual heads, MLP starts, a remainder past `max_order`) sum to the logits, so their
contributions to one logit sum to it. Each term's row is centred over the vocabulary
first (softmax ignores a constant per row), so the contributions sum to the centred logit
`logit[t] - mean(logit)`."""

from __future__ import annotations

import torch
from torch import Tensor

from qkov.circuits import path_expansion
from qkov.model import Transformer

# Chains of more heads than this go into one exact remainder term (bounded work per request).
MAX_ORDER = 2


@torch.no_grad()
def next_token_attributions(
    model: Transformer, tokens: Tensor, targets: Tensor, k: int = 6
) -> list[dict[str, object]]:
    """tokens [pos], targets [pos] (the token whose logit is explained at each position) ->
    per position {"total": centred logit of the target, "paths": the k terms with the
    largest |contribution| [{"name", "order", "logit"}], "rest": the other terms' sum}.
    total == sum(paths) + rest, to float rounding."""
    pe = path_expansion(model, tokens[None], max_order=MAX_ORDER)
    # [term, pos]: each term's logit of the target minus its mean logit (no [term, pos,
    # d_vocab] stack: one term's logits at a time)
    share = torch.stack(
        [t.logits[0].gather(-1, targets[:, None])[:, 0] - t.logits[0].mean(-1) for t in pe.terms]
    )
    total = share.sum(0)  # [pos]
    out = []
    for i in range(tokens.shape[0]):
        order = share[:, i].abs().argsort(descending=True)[:k].tolist()
        paths = [
            {"name": pe.terms[j].name, "order": pe.terms[j].order, "logit": float(share[j, i])}
            for j in order
        ]
        rest = float(total[i]) - sum(p["logit"] for p in paths)
        out.append({"total": float(total[i]), "paths": paths, "rest": rest})
    return out
