"""Autoregressive sampling from an AttnOnlyTransformer."""

from __future__ import annotations

import torch
from torch import Tensor

from qkov.errors import QkovError
from qkov.model import AttnOnlyTransformer


@torch.no_grad()
def generate(
    model: AttnOnlyTransformer,
    prompt: Tensor,
    n_tokens: int,
    temperature: float = 0.8,
    seed: int = 0,
) -> Tensor:
    """prompt [pos] -> [pos + n_tokens]; the context is cut to the last n_ctx tokens."""
    g = torch.Generator().manual_seed(seed)
    seq = prompt.long().cpu()
    for _ in range(n_tokens):
        ctx = seq[-model.cfg.n_ctx :]
        logits = model(ctx[None])[0, -1].float().cpu()
        if not torch.isfinite(logits).all():
            raise QkovError(
                "the model's logits are not finite: its weights hold NaN or inf "
                "(a diverged or corrupt checkpoint); use an earlier checkpoint"
            )
        if temperature <= 0:
            nxt = logits.argmax()
        else:
            # Shift by the max, in float64: logits / 1e-30 would overflow to inf - inf = nan.
            probs = ((logits.double() - logits.max()) / temperature).softmax(-1)
            nxt = torch.multinomial(probs, 1, generator=g)[0]
        seq = torch.cat([seq, nxt.view(1)])
    return seq
