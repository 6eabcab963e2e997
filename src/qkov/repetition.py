"""The repeated random tokens test: the induction benchmark peers report.

A batch of random sequences, each a block of `half_len` tokens followed by the same block
(the test TransformerLens tutorials and ARENA use: batch 10, a block of 50). An induction
head, at each token of the repeat, attends to the token after that token's earlier
occurrence; a model that uses it predicts the repeat far better than the first block.

Tokens are drawn uniformly from the whole vocabulary, without replacement within a row (so
every repeated token has exactly one earlier occurrence): `qkov.data.probes.
repeated_random_tokens`. Unlike qkov's standard probe (`induction_probe`), the period is the
same in every row, so a head that attends a fixed offset back would also score here: use
this test to compare with published numbers, the standard probe to label heads."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from qkov.data.probes import repeated_random_tokens
from qkov.heads import induction_score
from qkov.loss import token_losses
from qkov.model import Transformer


@dataclass
class RepetitionTest:
    """Per-head induction scores [n_layers, n_heads] and the loss on each half.

    first_half_loss: mean loss of predicting tokens 1 .. half_len-1 (the random block);
    repeated_half_loss: mean loss of predicting tokens half_len+1 .. 2*half_len-1 (the repeat,
    after its first token, which no model can know). uniform_loss = ln(d_vocab)."""

    batch: int
    half_len: int
    seed: int
    induction_scores: Tensor  # [n_layers, n_heads]
    first_half_loss: float
    repeated_half_loss: float
    uniform_loss: float

    @property
    def repeated_fraction(self) -> float:
        """Repeated-half loss as a fraction of the uniform loss ln(d_vocab)."""
        return self.repeated_half_loss / self.uniform_loss

    def top_heads(self, k: int = 3) -> list[tuple[int, int, float]]:
        """The k best-scoring heads as (layer, head, score), best first."""
        flat = self.induction_scores.flatten()
        order = flat.argsort(descending=True)[:k].tolist()
        n_heads = self.induction_scores.shape[1]
        return [(i // n_heads, i % n_heads, float(flat[i])) for i in order]

    def to_dict(self) -> dict[str, object]:
        return {
            "batch": self.batch,
            "half_len": self.half_len,
            "seed": self.seed,
            "induction_scores": self.induction_scores.tolist(),
            "first_half_loss": self.first_half_loss,
            "repeated_half_loss": self.repeated_half_loss,
            "uniform_loss": self.uniform_loss,
            "repeated_fraction": self.repeated_fraction,
        }


@torch.no_grad()
def repetition_test(
    model: Transformer, batch: int = 10, half_len: int = 50, seed: int = 0
) -> RepetitionTest:
    """Run the test on `model` (its sequences are 2 * half_len tokens, which must fit n_ctx)."""
    cfg = model.cfg
    tokens = repeated_random_tokens(cfg.d_vocab, batch, half_len, seed).to(model.device)
    logits, cache = model.run_with_hooks(tokens, cache_names=lambda n: n.startswith("pattern."))
    scores = (
        torch.stack(
            [
                induction_score(cache[f"pattern.{l}"].float(), tokens, half_len)
                for l in range(cfg.n_layers)
            ]
        )
        if cfg.n_layers
        else torch.zeros(0, cfg.n_heads)
    )
    losses = token_losses(logits, tokens)  # column t-1 predicts token t
    first = losses[:, : half_len - 1]  # tokens 1 .. half_len-1
    repeated = losses[:, half_len:]  # tokens half_len+1 .. 2*half_len-1
    return RepetitionTest(
        batch=batch,
        half_len=half_len,
        seed=seed,
        induction_scores=scores.cpu(),
        first_half_loss=float(first.mean()),
        repeated_half_loss=float(repeated.mean()),
        uniform_loss=math.log(cfg.d_vocab),
    )
