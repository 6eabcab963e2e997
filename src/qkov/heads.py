"""Head detectors: what each head does, read off the model's own attention patterns.

(The labels drawn from these scores, with an induction head's partners, are
`qkov.classification`.)

Every score is a tensor [n_layers, n_heads] computed from the patterns
A [batch, head, destination, source] of a forward pass (Olsson et al., 2022):

    previous_token   mean A[i, i-1]: attention to the previous position
    induction        on a probe ending in a repeated block [.. x_0..x_{h-1} x_0..x_{h-1}]: mean
                     attention from each destination i in the last block to i-h+1, the token
                     AFTER the previous occurrence of the destination token. On other tokens
                     it falls back to the prefix-matching definition below.
    prefix_matching  the same test stated for any text (no known repeat structure needed):
                     attention mass on every source j+1 < i such that token[j] == token[i],
                     averaged over destinations that have one. On the probe it agrees with
                     `induction` up to accidental repeats; on real text it is the one to read.
    duplicate_token  attention mass on earlier occurrences of the destination token itself.
    copying          does what the head moves raise the logit of the token it attends to?
                     Choice: for every source j, the head's direct logit effect
                     e_j = v_j W_O W_U [d_vocab], v_j = x_j W_V + b_V the head's actual value
                     vector (x_j: its normalised input), W_O, W_U of the folded model (norm
                     weights folded in, `qkov.fold`); the final norm's scale (positive) and
                     b_U (the same for every head) change no rank, so they are left out;
                     c_j = 1 - 2 * (rank of token_j in e_j, ties counted half) / (d_vocab-1)
                     in [-1, 1] (1: the head makes its source token the top logit); the score
                     is the attention-weighted mean of c_j over destinations. Direct path only
                     (what later heads and MLPs make of the write is not seen).
    positional       1 - mean total-variation distance between a sequence's attention row and
                     the batch-mean row: 1 when the pattern depends on position only. On the
                     repeated probe every sequence has the same repeat structure, so induction
                     and duplicate-token heads score high too: read it after the others.

TransformerLens's `detect_head` ("mul") divides the same attention mass by every destination,
not those that have such a source: its previous-token score is this one times (n - 1) / n,
its duplicate-token and induction (a prefix-matching pattern) scores likewise (tested).

The standard probe (`induction_probe`) is a seeded batch of random filler followed by a
random block repeated twice, the block length varying from row to row: with one fixed
period (`repeated_random_tokens`) a head that attends a fixed offset back through W_pos
scores as "induction" too, and models trained on a fixed-period task learn exactly that.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from qkov import loss
from qkov.circuits import folded
from qkov.data.probes import (
    default_seq_len,
    induction_probe,
)
from qkov.data.tokenizer import start_ids
from qkov.errors import QkovError
from qkov.io import json_safe
from qkov.model import AttnOnlyTransformer, Transformer
from qkov.names import SCORE_NAMES
from qkov.reprs import axes, num, wrap

# elements of the [tokens, columns] logit-effect block per step: 4 MB, so that the rank's
# passes over it stay in cache (at TinyLlama's shape 2**24 took 44 ms a head, 2**20 16 ms)
_COPY_CHUNK = 2**20
_COPY_HEADS = 2**24  # elements of the [heads, d_head, columns] W_O W_U block per matmul
# copying_score ranks among every logit while tokens * d_vocab * d_head stays under this
# (per head); above it, among a seeded sample of columns (an estimate, recorded by analyze).
COPY_EXACT_BUDGET = 2**30
COPY_MIN_COLUMNS = 1024


# ---------------------------------------------------------------------------- scores per layer
def _masked_mean(pattern: Tensor, mask: Tensor) -> Tensor:
    """Attention mass on `mask` [batch, dest, src], averaged over destinations with any
    masked source. pattern [batch, head, dest, src] -> [head] (NaN if no such destination)."""
    has = mask.any(-1)  # [batch, dest]
    n = int(has.sum())
    if n == 0:
        return torch.full((pattern.shape[1],), float("nan"))
    mass = (pattern * mask[:, None].to(pattern.dtype)).sum(-1)  # [batch, head, dest]
    return (mass * has[:, None]).sum(dim=(0, 2)) / n


def _earlier_same(tokens: Tensor) -> Tensor:
    """[batch, dest, src]: src < dest and token[src] == token[dest]."""
    n = tokens.shape[1]
    same = tokens[:, :, None] == tokens[:, None, :]
    return same & torch.ones(n, n, dtype=torch.bool, device=tokens.device).tril(-1)


def previous_token_score(pattern: Tensor) -> Tensor:
    """pattern [batch, head, dest, src] -> [head]: mean attention from i to i-1 (i >= 1)."""
    if pattern.shape[-1] < 2:
        return torch.full((pattern.shape[1],), float("nan"))
    return pattern.diagonal(offset=-1, dim1=-2, dim2=-1).mean(dim=(0, 2))


def duplicate_token_score(pattern: Tensor, tokens: Tensor) -> Tensor:
    """pattern [batch, head, dest, src], tokens [batch, pos] -> [head]: attention mass on
    earlier occurrences of the destination token."""
    return _masked_mean(pattern, _earlier_same(tokens))


def prefix_matching_score(pattern: Tensor, tokens: Tensor) -> Tensor:
    """pattern [batch, head, dest, src], tokens [batch, pos] -> [head]: attention mass on
    each source j+1 < dest whose predecessor j holds the destination token."""
    same = _earlier_same(tokens)
    after = torch.zeros_like(same)
    after[:, :, 1:] = same[:, :, :-1]
    n = tokens.shape[1]
    after &= torch.ones(n, n, dtype=torch.bool, device=tokens.device).tril(-1)
    return _masked_mean(pattern, after)


def induction_score(
    pattern: Tensor, tokens: Tensor | None, half_len: int | Tensor | None = None
) -> Tensor:
    """pattern [batch, head, dest, src] -> [head]: attention to the token after the previous
    occurrence of the destination token.

    With `half_len` (an int, or [batch] per row: each row ENDS with a block of that length
    repeated twice, as in both probes): mean of A[i, i-h+1] over the last h destinations i.
    Without it: `prefix_matching_score` (then tokens [batch, pos] are needed)."""
    if half_len is None:
        if tokens is None:
            raise QkovError("induction_score needs tokens or half_len")
        return prefix_matching_score(pattern, tokens)
    B, n = pattern.shape[0], pattern.shape[-1]
    h = torch.as_tensor(half_len, device=pattern.device).long().expand(B)[:, None]  # [batch, 1]
    if int(h.min()) < 2 or 2 * int(h.max()) > n:
        raise QkovError(f"half_len {half_len} does not fit sequences of {n} tokens")
    dest = torch.arange(n, device=pattern.device)[None]  # [1, dest]
    src = (dest - h + 1).clamp(min=0)  # [batch, dest]
    mass = pattern.gather(-1, src[:, None, :, None].expand(B, pattern.shape[1], n, 1))[..., 0]
    second = (dest >= n - h).to(pattern.dtype)  # [batch, dest]: destinations in the last block
    return (mass * second[:, None]).sum(dim=(0, 2)) / second.sum()


def positional_score(pattern: Tensor) -> Tensor:
    """pattern [batch, head, dest, src] -> [head]: 1 - mean total-variation distance of each
    row from the batch-mean row (destinations >= 1). NaN for a batch of one."""
    if pattern.shape[0] < 2 or pattern.shape[-1] < 2:
        return torch.full((pattern.shape[1],), float("nan"))
    tv = 0.5 * (pattern - pattern.mean(0, keepdim=True)).abs().sum(-1)  # [batch, head, dest]
    return 1 - tv[..., 1:].mean(dim=(0, 2))


def copying_columns(d_vocab: int, n_tokens: int, d_head: int) -> int | None:
    """How many logit columns `copying_score` compares each source token with: None (all of
    them, exact) while n_tokens * d_vocab * d_head <= COPY_EXACT_BUDGET per head, else the
    seeded sample that fits the budget (at least COPY_MIN_COLUMNS): the score is then an
    estimate."""
    if n_tokens * d_vocab * d_head <= COPY_EXACT_BUDGET:
        return None
    n = max(COPY_MIN_COLUMNS, COPY_EXACT_BUDGET // max(1, n_tokens * d_head))
    return None if n >= d_vocab else n


def copying_score(
    model: Transformer,
    layer: int,
    pattern: Tensor,
    value: Tensor,
    tokens: Tensor,
    n_columns: int | None | str = "auto",
    seed: int = 0,
) -> Tensor:
    """Attention-weighted rank of the source token in the head's direct logit effect.

    pattern [batch, head, dest, src]; value [batch, head, pos, d_head], the layer's value
    vectors (hook `v.{layer}`: normalised input @ W_V + b_V); tokens [batch, pos]. Returns
    [head] in [-1, 1] (see module docstring). Exact on every architecture: the rank of a
    token in v_j W_O W_U (folded weights) is its rank in the head's write to the logits.

    n_columns: None ranks among all d_vocab logits (exact); an int ranks among a seeded
    sample of that many logit columns (`qkov.trigrams.sample_tokens`; the source's own logit
    always counts as itself, never as a rival) and scales the count to d_vocab - 1: an
    unbiased ESTIMATE of the rank, equal to the exact one when the sample is every token.
    "auto": `copying_columns` (exact where that is cheap, e.g. the demo models)."""
    from qkov.trigrams import sample_tokens

    B, n = tokens.shape
    V = model.cfg.d_vocab
    if n_columns == "auto":
        n_columns = copying_columns(V, B * n, model.cfg.d_head)
    w = folded(model).weights()
    cols = sample_tokens(V, n_columns, seed).to(value.device)  # [m] sorted logit columns
    m = cols.numel()
    where = torch.full((V,), -1, dtype=torch.long, device=value.device)
    where[cols] = torch.arange(m, device=value.device)
    slot = where[tokens.reshape(-1)]  # [tokens]: the own token's column in the sample, or -1
    inside = slot >= 0
    n_rivals = (m - inside.float()).clamp(min=1)  # sampled columns other than the own one
    chunk = max(1, _COPY_CHUNK // m)  # tokens per step
    W_U = w["W_U"].to(value.dtype)  # [d_model, d_vocab]
    W_U_cols, W_U_own = W_U[:, cols], W_U.T[tokens.reshape(-1)]  # [d_model, m], [tokens, d_model]
    W_O = w["W_O"][layer].to(value.dtype)  # [head, d_head, d_model]
    H, dh = W_O.shape[:2]
    # each head's W_O W_U, at the sampled columns and at the own token: big matmuls over
    # several heads at once (up to _COPY_HEADS elements of OU), faster than one per head
    own_U = (W_U_own @ W_O.reshape(H * dh, -1).T).reshape(B * n, H, dh)  # [tokens, head, d_head]
    per_group = max(1, _COPY_HEADS // (dh * m))
    out = []
    for h in range(H):
        if h % per_group == 0:
            group = W_O[h : h + per_group]
            OUs = (group.reshape(-1, group.shape[-1]) @ W_U_cols).reshape(-1, dh, m)
        OU = OUs[h % per_group]  # [d_head, m]
        v = value[:, h].reshape(B * n, -1)  # [tokens, d_head]
        own_out = (v * own_U[:, h]).sum(-1)  # [tokens]: the own token's logit, sampled or not
        c = torch.empty(B * n, device=value.device)
        for s in range(0, B * n, chunk):
            t = slice(s, s + chunk)
            e = v[t] @ OU  # [chunk, m]
            own_in = e.gather(-1, slot[t].clamp(min=0)[:, None])[:, 0]  # exact where inside
            own = torch.where(inside[t], own_in, own_out[t].to(e.dtype))[:, None]  # [chunk, 1]
            # rank = rivals above + half the tied ones (the own column, when sampled, ties
            # itself and is no rival). With sign(e - own) summed, s = above - below and
            # above + below + ties = m, so above + ties / 2 = (m + s) / 2: one pass, exact
            # (integers) in float32.
            signs = e.sub_(own).sign_().sum(-1)
            rank = 0.5 * (m + signs - inside[t].float()) * (V - 1) / n_rivals[t]
            c[t] = 1 - 2 * rank / max(V - 1, 1)
        c = c.reshape(B, n)
        weight = pattern[:, h].sum(dim=1)  # [batch, src]: total attention each source gets
        out.append((weight * c).sum() / (B * n))
    return torch.stack(out)


@torch.no_grad()
def attention_patterns(model: AttnOnlyTransformer, tokens: Tensor) -> Tensor:
    """Every head's attention pattern on tokens [batch, pos]:
    [n_layers, batch, n_heads, dest, src] (rows: destinations, summing to 1 over sources)."""
    tokens = model.check_tokens(tokens)
    names = [f"pattern.{l}" for l in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(tokens, names=names)
    if not names:  # a 0-layer model: no heads, no patterns
        b, n = tokens.shape
        return torch.zeros(0, b, model.cfg.n_heads, n, n, device=tokens.device)
    return torch.stack([cache[n] for n in names]).float()


# ---------------------------------------------------------------------------- all heads
@dataclass(frozen=True)
class HeadScores:
    """Detector scores for every head, each [n_layers, n_heads]; see the module docstring."""

    previous_token: Tensor
    induction: Tensor
    prefix_matching: Tensor
    duplicate_token: Tensor
    copying: Tensor
    positional: Tensor
    measured_on: str  # "random_tokens" (the seeded induction probe) or "tokens" (given)
    n_sequences: int
    seq_len: int
    # [batch, pos - 1]: the model's loss on each token of the same pass (`qkov.loss.
    # token_losses`), when asked (head_scores(token_losses=True)); not in to_dict
    token_losses: Tensor | None = field(default=None, repr=False)

    def get(self, layer: int, head: int) -> dict[str, float]:
        return {name: float(getattr(self, name)[layer, head]) for name in SCORE_NAMES}

    def best(self, name: str) -> tuple[float, int, int]:
        """(score, layer, head) of the head with the highest `name` score (NaN-safe)."""
        s = torch.nan_to_num(getattr(self, name), nan=-math.inf)
        layer, head = (int(t) for t in torch.unravel_index(s.argmax(), s.shape))
        return float(getattr(self, name)[layer, head]), layer, head

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {n: json_safe(getattr(self, n).tolist()) for n in SCORE_NAMES}
        d.update(measured_on=self.measured_on, n_sequences=self.n_sequences, seq_len=self.seq_len)
        return d

    def __repr__(self) -> str:
        best = []
        for name in SCORE_NAMES if self.induction.numel() else ():
            score, l, h = self.best(name)
            best.append(f"{name} {num(score)}" + (f" (L{l}H{h})" if math.isfinite(score) else ""))
        shape = axes(self.induction.shape, ("layer", "head"))
        return (
            f"HeadScores({len(SCORE_NAMES)} scores, each {shape}, on {measurement(self)};\n"
            + wrap("best: ", best or ["no heads"], end=")")
        )


def head_scores(
    model: AttnOnlyTransformer,
    tokens: Tensor | None = None,
    *,
    half_len: int | Tensor | None = None,
    batch: int = 16,
    seq_len: int | None = None,
    seed: int = 0,
    copying: bool = True,
    token_losses: bool = False,
    log: Callable[[str], None] | None = None,
) -> HeadScores:
    """Score every head on `tokens` [batch, pos], or (None) on the seeded `induction_probe`
    (batch x seq_len, default `default_seq_len(n_ctx)`).

    For given tokens that end with a repeated block, pass its `half_len` (int or [batch]) so
    that `induction` uses the known repeat; otherwise it is the prefix-matching score.
    token_losses: also keep the model's loss on each token from the same pass (for an ICL
    score on these tokens without a second pass); otherwise the pass stops at the last
    layer's attention. log: called with a line as the pass and the copying scores start
    (each ~25 s at 1B)."""
    say = log or (lambda line: None)
    cfg = model.cfg
    if tokens is None:
        probe = induction_probe(
            cfg.d_vocab,
            batch,
            seq_len or default_seq_len(cfg.n_ctx),
            seed,
            prefix=start_ids(model.tokenizer),  # as a text would start (Llama's BOS)
        )
        tokens, half_len, measured_on = probe.tokens, probe.half_lens, "random_tokens"
    else:
        measured_on = "tokens"
    tokens = model.check_tokens(tokens)
    want = ("pattern.", "v.") if copying else ("pattern.",)
    last = f"pattern.{cfg.n_layers - 1}" if cfg.n_layers and not token_losses else None
    say(f"the model over {tokens.shape[0]} x {tokens.shape[1]} tokens (attention patterns)")
    with torch.no_grad():
        logits, cache = model.run_with_hooks(
            tokens, cache_names=lambda n: n.startswith(want), stop=last
        )
    losses = None if logits is None or not token_losses else loss.token_losses(logits, tokens)
    rows: dict[str, list[Tensor]] = {name: [] for name in SCORE_NAMES}
    reader = folded(model) if copying else model  # fold once, not per layer
    if copying and cfg.n_layers:
        say(f"head scores and copying scores of {cfg.n_layers * cfg.n_heads} heads")
    for l in range(cfg.n_layers):
        A = cache[f"pattern.{l}"].float()
        rows["previous_token"].append(previous_token_score(A))
        rows["induction"].append(induction_score(A, tokens, half_len))
        rows["prefix_matching"].append(prefix_matching_score(A, tokens))
        rows["duplicate_token"].append(duplicate_token_score(A, tokens))
        rows["positional"].append(positional_score(A))
        if copying:
            value = cache[f"v.{l}"].float()
            rows["copying"].append(copying_score(reader, l, A, value, tokens))
        else:
            rows["copying"].append(torch.full((cfg.n_heads,), float("nan")))
    empty = torch.zeros(0, cfg.n_heads)
    stacked = {
        k: (torch.stack([r.float().cpu() for r in v]) if v else empty) for k, v in rows.items()
    }
    return HeadScores(
        **stacked,
        measured_on=measured_on,
        n_sequences=tokens.shape[0],
        seq_len=tokens.shape[1],
        token_losses=losses,
    )


def measurement(scores: HeadScores) -> str:
    """'16 x 64 random tokens': what the scores were measured on (their records' reprs)."""
    return f"{scores.n_sequences} x {scores.seq_len} {scores.measured_on.replace('_', ' ')}"


# The classification of heads into labels moved to qkov.classification, which imports this
# module; the names callers import from here load from there on first use (PEP 562).
_MOVED = ("HeadClassification", "HeadRecord", "Thresholds", "classify_heads", "knockout_partners")


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        return getattr(importlib.import_module("qkov.classification"), name)
    raise AttributeError(f"module 'qkov.heads' has no attribute {name!r}")
