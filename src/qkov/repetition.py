"""The repeated random tokens test: the induction benchmark peers report.

A batch of random sequences, each a block of `half_len` tokens followed by the same block
(the test TransformerLens tutorials and ARENA use: batch 10, a block of 50). An induction
head, at each token of the repeat, attends to the token after that token's earlier
occurrence; a model that uses it predicts the repeat far better than the first block.

Tokens are drawn uniformly from the whole vocabulary, without replacement within a row (so
every repeated token has exactly one earlier occurrence): `qkov.data.probes.
repeated_random_tokens`. Unlike qkov's standard probe (`induction_probe`), the period is the
same in every row, so a head that attends a fixed offset back would also score here: use
this test to compare with published numbers, the standard probe to label heads.

`RepeatedTokenLogit` says why the repeated half costs what it does: its loss is the
log-sum-exp of the logits less the repeated token's logit, both measured from the mean
logit, and the second splits exactly into what each writer into the residual stream adds
(the embedding, each head, each MLP, the biases), the final norm's scale frozen.

`CountBin` says which tokens it costs: where the model knows how often each token occurred
in its training split (`model.token_counts`, token_counts.json of the run), the repeated
half's loss by that count, a decade at a time. A model copies the tokens it saw often far
better than the rare ones, which random tokens draw as often."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from qkov.data.probes import repeated_random_tokens
from qkov.data.tokenizer import start_ids
from qkov.errors import QkovError
from qkov.heads import induction_score
from qkov.loss import token_losses
from qkov.model import Transformer
from qkov.reprs import capped, num, tensor, wrap


@dataclass
class RepeatedTokenLogit:
    """Means over the repeated half's predictions (tokens half_len+1 .. 2*half_len-1):
    logit, the repeated token's logit less the mean logit; log_sum_exp, the log-sum-exp of
    the logits less the mean logit (so the repeated-half loss = log_sum_exp - logit);
    writers, what each writer into the residual stream adds to logit through the unembedding (direct
    logit attribution, the final norm's scale frozen): "embed" (W_E), "pos" (W_pos, where
    it is in the stream), each head ("L1H6": its whole output, whatever it read), each MLP
    ("mlp0", with its output bias) and "bias" (b_O of every layer and b_U). They sum to
    logit. rival_logit and rival_writers: the same for the repeated token's strongest rival
    at each prediction (the other token with the highest logit): who outranks the copy.
    loss_without: the repeated half's loss with one layer's direct write to the logits taken
    out ("embed", "pos" where W_pos is in the stream, "attn0": all its heads, "mlp0"),
    everything else as it was (later layers still read it, the patterns and the final norm's
    scale frozen): an exact counterfactual of the logits, which says which layer's own
    guesses cost the copy."""

    logit: float
    log_sum_exp: float
    writers: dict[str, float]
    rival_logit: float | None = None
    rival_writers: dict[str, float] | None = None
    loss_without: dict[str, float] | None = None

    def top(self, k: int = 6) -> list[tuple[str, float]]:
        """The k writers that move the repeated token's logit most, largest |push| first."""
        return sorted(self.writers.items(), key=lambda kv: -abs(kv[1]))[:k]

    def __repr__(self) -> str:
        top = [f"{name} {num(v, '+.3f')}" for name, v in self.top(len(self.writers))]
        rival = "" if self.rival_logit is None else f", rival {num(self.rival_logit, '+.3f')}"
        return (
            f"RepeatedTokenLogit(logit {num(self.logit, '+.3f')}, log_sum_exp "
            f"{num(self.log_sum_exp)} (loss {num(self.log_sum_exp - self.logit)}){rival};\n"
            + wrap(f"{len(self.writers)} writers, largest |push|: ", capped(top, 5), end=")")
        )


@dataclass(frozen=True)
class CountBin:
    """The repeated half's predictions of tokens that occurred `count_from` <= count <
    `count_below` times in the model's training split: how many there are, their mean loss,
    and the means of that token's logit (counted from the mean logit) where the first half
    predicts it (first_logit: the model's prior for it) and where the repeat does
    (repeated_logit). lift = repeated_logit - first_logit: what the repeat adds."""

    count_from: int
    count_below: int
    predictions: int
    loss: float
    first_logit: float
    repeated_logit: float

    @property
    def label(self) -> str:
        """'never', '1-9', '1,000-9,999': the counts this bin holds."""
        if self.count_below == 1:
            return "never"
        return f"{self.count_from:,}-{self.count_below - 1:,}"

    @property
    def lift(self) -> float:
        return self.repeated_logit - self.first_logit


def count_edges(largest: int) -> list[int]:
    """The edges of the training-count bins, for counts up to `largest`: 0, 1, then decades
    up to the first above it, so the bins are 0 ("never"), 1-9, 10-99, ..."""
    return [0, 1] + [10**k for k in range(1, len(str(max(largest, 1))) + 1)]


def loss_by_count(
    losses: Tensor, first_logit: Tensor, repeated_logit: Tensor, targets: Tensor, counts: Tensor
) -> list[CountBin]:
    """The predictions of the tokens `targets` [...] binned by each one's training count
    (`counts` [d_vocab]): 0, then decades 1-9, 10-99, ... up to the one that holds the
    largest count; empty bins are left out. Each bin holds the means of `losses`,
    `first_logit` and `repeated_logit` (each shaped as targets) over its predictions, so the
    bins' means, weighted by their predictions, average to the whole one."""
    c = counts.to(targets.device)[targets].flatten()
    values = [x.flatten().float() for x in (losses, first_logit, repeated_logit)]
    bins = []
    for lo, hi in itertools.pairwise(count_edges(int(counts.max()) if counts.numel() else 0)):
        inside = (c >= lo) & (c < hi)
        if n := int(inside.sum()):
            bins.append(CountBin(lo, hi, n, *(float(x[inside].mean()) for x in values)))
    return bins


def pool_count_bins(tests: list[list[CountBin]]) -> list[CountBin]:
    """The bins of several tests (e.g. seeds) as one: each bin's means weighted by its
    predictions, exactly what `loss_by_count` gives on all their predictions together."""
    pooled: dict[tuple[int, int], list[float]] = {}
    for bins in tests:
        for b in bins:
            acc = pooled.setdefault((b.count_from, b.count_below), [0, 0.0, 0.0, 0.0])
            acc[0] += b.predictions
            for i, v in enumerate((b.loss, b.first_logit, b.repeated_logit), 1):
                acc[i] += b.predictions * v
    return [
        CountBin(lo, hi, int(n), loss / n, first / n, repeated / n)
        for (lo, hi), (n, loss, first, repeated) in sorted(pooled.items())
    ]


@dataclass
class RepetitionTest:
    """Per-head induction scores [n_layers, n_heads] and the loss on each half.

    first_half_loss: mean loss of predicting tokens 1 .. half_len-1 (the random block);
    repeated_half_loss: mean loss of predicting tokens half_len+1 .. 2*half_len-1 (the repeat,
    after its first token, which no model can know). uniform_loss = ln(d_vocab).
    by_training_count: the repeated half's loss by the token's training count
    (`loss_by_count`), None where the model has no token counts."""

    batch: int
    half_len: int
    seed: int
    induction_scores: Tensor  # [n_layers, n_heads]
    first_half_loss: float
    repeated_half_loss: float
    uniform_loss: float
    repeated_token_logit: RepeatedTokenLogit | None = None
    by_training_count: list[CountBin] | None = None

    @property
    def repeated_fraction(self) -> float:
        """Repeated-half loss as a fraction of the uniform loss ln(d_vocab)."""
        return self.repeated_half_loss / self.uniform_loss

    def top_heads(self, k: int = 3) -> list[tuple[int, int, float]]:
        """The k best-scoring heads as (layer, head, score), best first."""
        return top_heads(self.induction_scores, k)

    def __repr__(self) -> str:
        heads = [f"L{l}H{h} {num(s)}" for l, h, s in self.top_heads(3)]
        lines = [
            f"RepetitionTest({self.batch} x (2 x {self.half_len}) repeated random tokens, "
            f"seed {self.seed}:",
            f"  loss {num(self.first_half_loss)} on the first half -> "
            f"{num(self.repeated_half_loss)} on the repeat "
            f"({num(100 * self.repeated_fraction, '.0f')}% of uniform {num(self.uniform_loss)});",
            f"  induction_scores {tensor(self.induction_scores, ('layer', 'head'))}, top "
            + (", ".join(heads) or "-"),
        ]
        t = self.repeated_token_logit
        if t is not None:
            writers = [f"{name} {num(v, '+.2f')}" for name, v in t.top(3)]
            lines[-1] += ";"
            lines.append(
                f"  repeated token's logit {num(t.logit, '+.3f')}: {', '.join(writers)} "
                f"(of {len(t.writers)} writers)"
            )
        if self.by_training_count:
            lines[-1] += ";"
            bins = [
                f"{b.label} {num(b.loss, '.2f')} ({b.predictions})" for b in self.by_training_count
            ]
            lines.append(wrap("repeated-half loss by training count: ", bins))
        return "\n".join(lines) + ")"

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
            "repeated_token_logit": (
                None if self.repeated_token_logit is None else vars(self.repeated_token_logit)
            ),
            "by_training_count": (
                None
                if self.by_training_count is None
                else [{**vars(b), "label": b.label, "lift": b.lift} for b in self.by_training_count]
            ),
        }


@torch.no_grad()
def repetition_test(
    model: Transformer, batch: int = 10, half_len: int = 50, seed: int = 0, split: bool = True
) -> RepetitionTest:
    """Run the test on `model`: its sequences are 2 * half_len tokens after what the model's
    tokenizer puts in front of any text (Llama's beginning-of-text token; `start_ids`: p
    tokens), which must fit n_ctx (`repetition_half_len`). split=False leaves out both
    splits of the repeated half (None): `repeated_token_logit`, the costly part (a fold of
    the model and a logit pass per layer group), and `by_training_count`; the scores and
    losses are the same."""
    cfg = model.cfg
    prefix = start_ids(model.tokenizer)
    p = len(prefix)
    if p + 2 * half_len > cfg.n_ctx:
        raise QkovError(
            f"the repetition test's {p} + 2 x {half_len} tokens do not fit n_ctx={cfg.n_ctx}: "
            f"use half_len <= {(cfg.n_ctx - p) // 2}"
        )
    tokens = repeated_random_tokens(cfg.d_vocab, batch, half_len, seed, prefix).to(model.device)
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
    first = losses[:, p : p + half_len - 1]  # the block's tokens 1 .. half_len-1
    repeated = losses[:, p + half_len :]  # the repeat's tokens 1 .. half_len-1
    counts = getattr(model, "token_counts", None)  # token_counts.json of the run, or None
    by_training_count = None
    if counts is not None and split:
        # tokens 1 .. half_len-1 are predicted twice: by the first half (columns 0 ..
        # half_len-2) and by the repeat (columns half_len .. 2*half_len-2)
        t = tokens[:, p + 1 : p + half_len]
        centred = logits.float() - logits.float().mean(-1, keepdim=True)
        first_logit = centred[:, p : p + half_len - 1].gather(-1, t[..., None])[..., 0]
        repeated_logit = centred[:, p + half_len : p + 2 * half_len - 1]
        repeated_logit = repeated_logit.gather(-1, t[..., None])[..., 0]
        by_training_count = loss_by_count(repeated, first_logit, repeated_logit, t, counts)
        del centred
    del logits, cache  # [batch, pos, d_vocab] and the patterns: not held through the split
    return RepetitionTest(
        batch=batch,
        half_len=half_len,
        seed=seed,
        induction_scores=scores.cpu(),
        first_half_loss=float(first.mean()),
        repeated_half_loss=float(repeated.mean()),
        uniform_loss=math.log(cfg.d_vocab),
        repeated_token_logit=repeated_token_logit(model, tokens, half_len) if split else None,
        by_training_count=by_training_count,
    )


def repetition_half_len(model: Transformer) -> int:
    """The peers' block, 50 tokens, or as many as n_ctx holds twice after the tokens the
    model's tokenizer puts in front of any text (`start_ids`)."""
    return min(50, (model.cfg.n_ctx - len(start_ids(model.tokenizer))) // 2)


def top_heads(scores: Tensor, k: int = 3) -> list[tuple[int, int, float]]:
    """The k best of scores [n_layers, n_heads] as (layer, head, score), best first."""
    flat = scores.flatten()
    order = flat.argsort(descending=True)[:k].tolist()
    n_heads = scores.shape[1]
    return [(i // n_heads, i % n_heads, float(flat[i])) for i in order]


def repetition_record(
    model: Transformer, seed: int = 0, n_seeds: int = 1
) -> dict[str, float | int | str | None]:
    """The test (seed, a block of `repetition_half_len`) as the flat keys of a training record
    (`qkov.training_probe`, `qkov forming`): repetition_half_len, the best and second best
    head (repetition_induction_head, _score, repetition_second_head, _score: None where the
    model has no such head), repetition_first_half_loss, repetition_repeated_half_loss,
    repetition_uniform_loss and repetition_repeated_fraction. One forward pass of 10 x 2
    half_len tokens a seed; {} where n_ctx holds no block of 4. n_seeds > 1: each head's
    score and each loss is the mean over seeds seed .. seed + n_seeds - 1 (the heads ranked
    by their mean), and the record says so (repetition_seeds)."""
    half = repetition_half_len(model)
    if half < 4:
        return {}
    if n_seeds < 1:
        raise QkovError(f"n_seeds must be at least 1, got {n_seeds}")
    tests = [
        repetition_test(model, half_len=half, seed=seed + i, split=False) for i in range(n_seeds)
    ]
    scores = torch.stack([r.induction_scores for r in tests]).mean(0)
    first = sum(r.first_half_loss for r in tests) / n_seeds
    repeated = sum(r.repeated_half_loss for r in tests) / n_seeds
    uniform = tests[0].uniform_loss
    top = [(f"L{l}H{h}", s) for l, h, s in top_heads(scores, 2)]
    top += [(None, None)] * (2 - len(top))
    return {
        "repetition_half_len": half,
        "repetition_induction_head": top[0][0],
        "repetition_induction_score": top[0][1],
        "repetition_second_head": top[1][0],
        "repetition_second_score": top[1][1],
        "repetition_first_half_loss": first,
        "repetition_repeated_half_loss": repeated,
        "repetition_uniform_loss": uniform,
        "repetition_repeated_fraction": repeated / uniform,
    } | ({"repetition_seeds": n_seeds} if n_seeds > 1 else {})


LOGIT_ELEMENTS = 2**25  # a per-writer loss's logits at a time (128 MiB): 5 sequences at
# 128k tokens, where a [49, d_model] @ W_U product ran at half the rate of a [245, ...] one


@torch.no_grad()
def repeated_token_logit(model: Transformer, tokens: Tensor, half_len: int) -> RepeatedTokenLogit:
    """Split the repeated half of tokens [batch, p + 2 * half_len] (p tokens in front, then a
    block repeated once) into
    log_sum_exp - logit, and logit by writer (see `RepeatedTokenLogit`). Exact on every
    architecture: the model is folded (`qkov.fold.fold_layernorm`: a learned final norm's
    weight and bias go into W_U and b_U, layernorm's centring into the writers), so the
    logits are the final stream, a sum of its writers, over the frozen final scale, @ W_U."""
    from qkov.fold import fold_layernorm
    from qkov.paths import frozen_scales

    m = fold_layernorm(model, center_unembed=False, share=True)
    cfg, w = m.cfg, m.weights()
    # Each head's output is formed from z (its d_head-wide mix of values) one head at a time:
    # cached whole, head_out is [batch, head, pos, d_model] per layer (5.8 GB at TinyLlama).
    kinds = ("scale", "z", "mlp_out")
    logits, cache = m.run_with_cache(tokens, names=lambda n: n.split(".")[0] in kinds)
    p = tokens.shape[1] - 2 * half_len  # the tokens in front of the block (`start_ids`)
    at = slice(p + half_len, p + 2 * half_len - 1)  # the positions predicting the repeat
    t = tokens[:, p + half_len + 1 :]  # [batch, half_len - 1]
    lg = logits[:, at].float().clone()  # [batch, half_len - 1, d_vocab]; the rest let go
    del logits
    # A sequence at a time (and rows below): [batch, half_len - 1, d_vocab] is 250 MB at 128k
    rival = torch.stack(  # [batch, half_len - 1]: the other token with the top logit
        [row.scatter(-1, tr[:, None], -math.inf).argmax(-1) for row, tr in zip(lg, t, strict=True)]
    )
    W_U = w["W_U"].float()
    # [2 (the repeated token, its rival), batch, half_len - 1, d_model]: columns less the mean
    u = torch.stack([W_U.T[t], W_U.T[rival]]) - W_U.mean(1)
    final = frozen_scales(m, cache)[-1]
    final = final[:, at] if isinstance(final, Tensor) else final

    def push(x: Tensor) -> Tensor:  # x [batch, pos, d_model] or [d_model] (a bias) -> [2]
        x = x[:, at] if x.ndim == 3 else x
        return ((x.float() / final) * u).sum(-1).mean((1, 2))

    rows = max(1, LOGIT_ELEMENTS // lg[0].numel())  # sequences at a time (all, at 2k tokens)

    def loss_without(x: Tensor) -> float:  # x [batch, pos, d_model]: a layer's write
        x = x[:, at].float() / final
        total = 0.0
        for i in range(0, lg.shape[0], rows):  # the logits without its direct path
            rest = lg[i : i + rows] - x[i : i + rows] @ W_U
            total += float(rest.log_softmax(-1).gather(-1, t[i : i + rows, :, None]).sum())
        return -total / t.numel()

    embed = w["W_E"][tokens]
    writers, without = {"embed": push(embed)}, {"embed": loss_without(embed)}
    if cfg.positional == "standard":
        pos = w["W_pos"][: tokens.shape[1]].expand_as(embed)  # [batch, pos, d_model]
        writers["pos"], without["pos"] = push(pos), loss_without(pos)
    bias = torch.zeros(cfg.d_model, device=m.device)
    for l in range(cfg.n_layers):
        z = cache[f"z.{l}"]  # [batch, head, pos, d_head]
        attn = torch.zeros_like(embed, dtype=torch.float32)
        for h in range(cfg.n_heads):
            out = z[:, h] @ w["W_O"][l, h]  # [batch, pos, d_model]: the head's write
            writers[f"L{l}H{h}"] = push(out)
            attn += out
        without[f"attn{l}"] = loss_without(attn)  # the heads' writes, not b_O
        if cfg.bias:
            bias = bias + w["b_O"][l]
        if cfg.d_mlp:
            writers[f"mlp{l}"] = push(cache[f"mlp_out.{l}"])  # with its b_out
            without[f"mlp{l}"] = loss_without(cache[f"mlp_out.{l}"])
    if cfg.bias:  # b_O of every layer through W_U, and b_U itself
        b_U = w["b_U"].float()
        writers["bias"] = push(bias) + torch.stack([b_U[t], b_U[rival]]).mean((1, 2)) - b_U.mean()
    mean = lg.mean(-1)
    return RepeatedTokenLogit(
        logit=float((lg.gather(-1, t[..., None])[..., 0] - mean).mean()),
        log_sum_exp=float((lg.logsumexp(-1) - mean).mean()),
        writers={name: float(v[0]) for name, v in writers.items()},
        rival_logit=float((lg.gather(-1, rival[..., None])[..., 0] - mean).mean()),
        rival_writers={name: float(v[1]) for name, v in writers.items()},
        loss_without=without,
    )
