"""Skip-trigrams `[source] ... [destination] -> [out]` read off a head's factored circuits.

A head stores a vocab^3 table of skip-trigrams in factored form: the QK circuit
`W_E W_QK W_E^T` [destination, source] says how much a destination attends to a source, the
OV circuit `W_E W_OV W_U` [source, out] what attending to the source does to each logit.
Scoring (all quantities are exact functions of the two circuits):

    a[d, s] = (QK[d, s] - mean_s' QK[d, s']) / sqrt(d_head)   centred attention logit
    o[s, t] =  OV[s, t] - mean_t' OV[s, t']                   centred logit boost
    score(s, d, t) = sigmoid(a[d, s]) * o[s, t]

Centring removes what the softmaxes ignore (a constant per destination row, a constant per
logit row); sigmoid(a) is the attention d pays to s when the only other candidate has the
row's mean score. So score is the logit boost of `out` at `destination` given `source`.

The exact top-k never forms vocab x vocab x vocab (nor vocab x vocab): for score > 0 a
top-k trigram's destination is among the k best for its source (top-k of a[:, s]) and its
out among the k best of its source (top-k of o[s, :]). Both are found by forming the
circuits a block of sources at a time, then the vocab x k x k candidates are ranked.
Heads beyond layer 0 are read through the direct embedding path only (composition ignored).
General models: the circuits are `qkov.circuits.qk_circuit` / `ov_circuit` of the folded
weights with the head's biases (b_Q, b_K, b_V); layer 0 of a layernorm/rmsnorm model is read
with each token over its own RMS (positions left out), and MLPs are left out, so there the
table is an approximation of what the head does, as for later layers of any model.

Rare tokens: a byte-level BPE keeps tokens the training stream barely holds; their
embeddings stay near their initialisation and their circuits are noise that can top a
table (`'ó' ... 'ó' -> 'ARK'`). With `min_count`, every token of a trigram (source,
destination and out) must have been seen at least that often in training
(`model.token_counts`, written by `qkov train` as token_counts.json).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from qkov.circuits import CHUNK_ELEMENTS, cached, check_head, folded, token_embedding
from qkov.data.tokenizer import decode_token, known_ids
from qkov.errors import QkovError
from qkov.model import AttnOnlyTransformer
from qkov.names import MIN_TOKEN_COUNT

DEFAULT_MIN_COUNT = MIN_TOKEN_COUNT  # what `qkov analyze` and `qkov circuits` use


def allowed_tokens(model: AttnOnlyTransformer, min_count: int | None) -> Tensor | None:
    """[d_vocab] bool: tokens seen at least min_count times in training (min_count None or
    0: every token), and only ids the model's tokenizer has: a checkpoint whose vocabulary
    is padded past its tokenizer (Pythia: 50,304 ids, 50,277 tokens) never names an id no
    text can hold. None: no filter at all. min_count needs model.token_counts
    (token_counts.json of the run)."""
    known = known_ids(model.cfg.d_vocab, getattr(model, "tokenizer", None))
    if not min_count:
        return known
    if min_count < 0:
        raise QkovError(f"min_count must be >= 0, got {min_count}")
    counts = getattr(model, "token_counts", None)
    if counts is None:
        raise QkovError(
            "this model has no token counts (token_counts.json, written by `qkov train`): "
            "rank over all tokens (min_count=None / --all-tokens)"
        )
    keep = counts.to(torch.long) >= min_count
    keep = keep if known is None else keep & known
    if int(keep.sum()) < 2:
        raise QkovError(
            f"fewer than 2 tokens were seen {min_count} times in training: lower the minimum count"
        )
    return keep


def sample_tokens(d_vocab: int, n: int | None, seed: int = 0) -> Tensor:
    """[min(n, d_vocab)] sorted token ids: a seeded sample without replacement, or every id
    (0..d_vocab-1) for n None or n >= d_vocab. The same (d_vocab, n, seed) gives the same ids."""
    if n is None or n >= d_vocab:
        return torch.arange(d_vocab)
    if n < 1:
        raise QkovError(f"a token sample needs at least 1 token, got {n}")
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(d_vocab, generator=g)[:n].sort().values


def token_str(model: AttnOnlyTransformer, token: int) -> str:
    """Text of one token via model.tokenizer, or '[id]' without a tokenizer."""
    return decode_token(model.tokenizer, token)


@dataclass(frozen=True)
class SkipTrigram:
    """`source ... destination -> out` with its score = sigmoid(attention) * boost."""

    source: int
    destination: int
    out: int
    score: float
    attention: float  # a[destination, source], centred attention logit
    boost: float  # o[source, out], centred logit boost
    source_str: str
    destination_str: str
    out_str: str

    def __str__(self) -> str:
        return (
            f"{self.source_str!r} ... {self.destination_str!r} -> {self.out_str!r}  "
            f"({self.score:+.3f})"
        )

    def __repr__(self) -> str:
        return f"SkipTrigram({self})"

    def to_dict(self) -> dict[str, object]:
        return dict(vars(self))


class SkipTrigramTable(list):
    """The list `skip_trigrams` returns (a plain list in every other way), drawn as a table
    in Jupyter (qkov.notebook)."""

    def _repr_html_(self) -> str:
        from qkov.notebook import skip_trigrams_html

        return skip_trigrams_html(self)


@dataclass(frozen=True)
class FactoringBug:
    """Two trigrams sharing a source; the factored head also predicts their crossings."""

    first: SkipTrigram
    second: SkipTrigram
    crossed: SkipTrigram  # source ... first.destination -> second.out
    crossed_reverse: SkipTrigram  # source ... second.destination -> first.out

    def __str__(self) -> str:
        return f"{self.first} & {self.second} => {self.crossed}, {self.crossed_reverse}"

    def __repr__(self) -> str:
        return f"FactoringBug({self})"

    def to_dict(self) -> dict[str, object]:
        return {name: t.to_dict() for name, t in vars(self).items()}


class HeadScorer:
    """The centred circuits a and o of one head, kept factored: `qk_circuit` (offset 0) and
    `ov_circuit` of the folded model, (E W_Q + b_Q)(E W_K + b_K)^T and (E W_V + b_V) W_O W_U.
    The factors a ranked row needs whole (the queries of all destinations, W_O W_U over
    all outs) are formed once, on first use; everything else only for the tokens asked
    for, so a sample of sources (or a list of token-split candidates) costs its own rows."""

    def __init__(
        self,
        model: AttnOnlyTransformer,
        layer: int,
        head: int,
        factors: tuple[Tensor, Tensor] | None = None,
    ):
        """factors: (E W_Q [d_vocab, d_head], W_O W_U [d_head, d_vocab]) of this head, formed
        by the caller (`_layer_factors`, a group of heads at once); None: formed on first use."""
        check_head(model, layer, head)
        self.model = model
        m = folded(model)
        w, bias = m.weights(), m.cfg.bias
        self.E = token_embedding(m)  # [d_vocab, d_model]
        self.W_Q, self.W_K = w["W_Q"][layer, head], w["W_K"][layer, head]  # [d_model, d_head]
        self.W_V, self.W_O = w["W_V"][layer, head], w["W_O"][layer, head]
        self.W_U = w["W_U"]  # [d_model, d_vocab]
        self.b_Q = w["b_Q"][layer, head] if bias else None
        self.b_K = w["b_K"][layer, head] if bias else None
        self.b_V = w["b_V"][layer, head] if bias else None
        self.scale = 1.0 / math.sqrt(model.cfg.d_head)
        # Centring through the factors: mean_s QK[d, s] = q[d] . mean_s k[s], so
        # a[d, s] * sqrt(d_head) = q[d] . (k[s] - mean k): no pass over a vocab row; the mean
        # key is that of the mean embedding (linear). Likewise each OV row's mean.
        # (the two vocabulary means are the model's, kept on it: every head asks)
        E_mean = cached(m, "mean_token_embedding", lambda: self.E.mean(0), self.E)
        k_mean = E_mean @ self.W_K
        self.k_mean = k_mean + self.b_K if bias else k_mean  # [d_head]
        U_mean = cached(m, "mean_W_U_column", lambda: self.W_U.mean(-1), self.W_U)
        self.OU_mean = self.W_O @ U_mean  # [d_head]
        self.device, self.dtype = self.E.device, self.E.dtype
        if factors is not None:  # what the cached properties below would form
            EQ, self.__dict__["OU"] = factors
            self.__dict__["q"] = EQ + self.b_Q if bias else EQ

    def q_rows(self, destinations: Tensor | int) -> Tensor:
        """The queries E W_Q + b_Q of destinations: [c, d_head]."""
        q = self.E[destinations] @ self.W_Q
        return q + self.b_Q if self.b_Q is not None else q

    def OU_cols(self, outs: Tensor | int) -> Tensor:
        """W_O W_U at outs: [d_head, c]."""
        return self.W_O @ self.W_U[:, outs]

    @functools.cached_property
    def q(self) -> Tensor:
        """Every destination's query: [d_vocab, d_head] (formed on first use)."""
        return self.q_rows(slice(None))

    @functools.cached_property
    def OU(self) -> Tensor:
        """W_O W_U over every out: [d_head, d_vocab] (formed on first use)."""
        return self.W_O @ self.W_U

    def k_centred(self, sources: Tensor | int, embedded: bool = False) -> Tensor:
        """k[sources] - mean k: [c, d_head] (or [d_head] for one source). embedded: sources
        are the rows E[sources] already, [c, d_model]."""
        k = (sources if embedded else self.E[sources]) @ self.W_K
        return (k + self.b_K if self.b_K is not None else k) - self.k_mean

    def v(self, sources: Tensor | int, embedded: bool = False) -> Tensor:
        """The OV circuit's left factor at sources, E W_V + b_V: [c, d_head]. embedded: as
        for k_centred."""
        v = (sources if embedded else self.E[sources]) @ self.W_V
        return v + self.b_V if self.b_V is not None else v

    def ov_mean(self, sources: Tensor | int) -> Tensor:
        """Means of the OV rows of sources: [c]."""
        return self.v(sources) @ self.OU_mean

    def a_by_source(self, sources: Tensor) -> Tensor:
        """a[:, sources]^T * sqrt(d_head): [c sources, d_vocab destinations]."""
        return self.k_centred(sources) @ self.q.T

    def o_by_source(self, sources: Tensor) -> Tensor:
        """o[sources] before centring: [c sources, d_vocab outs]."""
        return self.v(sources) @ self.OU

    def a(self, d: int, s: int) -> float:
        return float(self.q_rows(d) @ self.k_centred(s)) * self.scale

    def o(self, s: int, t: int) -> float:
        return float(self.v(s) @ self.OU_cols(t) - self.ov_mean(s))

    def trigram(self, s: int, d: int, t: int) -> SkipTrigram:
        a, o = self.a(d, s), self.o(s, t)
        m = self.model
        return SkipTrigram(
            source=s,
            destination=d,
            out=t,
            score=float(torch.sigmoid(torch.tensor(a))) * o,
            attention=a,
            boost=o,
            source_str=token_str(m, s),
            destination_str=token_str(m, d),
            out_str=token_str(m, t),
        )


@torch.no_grad()
def skip_trigrams(
    model: AttnOnlyTransformer,
    layer: int,
    head: int,
    k: int = 10,
    chunk_size: int | None = None,
    per_source: int | None = None,
    min_count: int | None = None,
    n_sources: int | None = None,
    seed: int = 0,
    factors: tuple[Tensor, Tensor] | None = None,
) -> list[SkipTrigram]:
    """Top-k skip-trigrams of a head by score (see the module docstring), best first.

    per_source: keep at most this many trigrams per source token. A rare source with a
    huge logit boost otherwise fills the whole list with one (source, out) pair and every
    destination; per_source=1 lists the k sources with the best trigram each.
    min_count: rank only trigrams whose three tokens were each seen at least this often in
    training (`allowed_tokens`); None: all tokens.

    n_sources: an ESTIMATE for large vocabularies: rank only the trigrams of a seeded sample
    of n_sources source tokens (`sample_tokens`; destinations and outs still range over the
    whole vocabulary), so the list is the exact top-k of that sample, not of the head. None
    (or n_sources >= d_vocab): every source, exact.

    Memory: O(chunk_size * d_vocab + n_sources * k^2); chunk_size (sources per block)
    defaults to 16 MiB of fp32. Time: two n_sources * d_vocab * d_head products (vocab^2 *
    d_head when exact), formed a block at a time.

    factors: this head's E W_Q [d_vocab, d_head] and W_O W_U [d_head, d_vocab] where the
    caller formed them with other heads' (`head_factors`: the same table, faster); None:
    formed here."""
    if k < 1:
        raise QkovError(f"k must be >= 1, got {k}")
    if per_source is not None and per_source < 1:
        raise QkovError(f"per_source must be >= 1, got {per_source}")
    V = model.cfg.d_vocab
    chunk = chunk_size or max(1, CHUNK_ELEMENTS // V)
    if chunk < 1:
        raise QkovError(f"chunk_size must be >= 1, got {chunk_size}")
    sc = HeadScorer(model, layer, head, factors)
    keep = allowed_tokens(model, min_count)
    k_eff = min(k, V if keep is None else int(keep.sum()))
    # Tokens left out cannot be picked as destination or out: -inf before the top-ks
    # (and as source: -inf candidates below).
    drop = None if keep is None else torch.where(keep, 0.0, -math.inf).to(sc.device)
    # One pass over source chunks: each source's k best destinations (by a) and outs (by o).
    # sigmoid is monotone and o's centring is a per-row constant, so both top-ks run on the
    # raw [c, d_vocab] blocks and the k survivors are transformed after.
    # Results go into preallocated [src, k] tensors: small tensors kept alive between the big
    # temporary blocks would fragment the heap (measured: RSS grew ~V^2 bytes without this).
    dev, dt = sc.device, sc.dtype
    src_ids = sample_tokens(V, n_sources, seed).to(dev)  # [S] sources ranked, sorted
    S = src_ids.numel()
    best_a, best_o = (torch.empty(S, k_eff, dtype=dt, device=dev) for _ in range(2))
    best_d, best_t = (torch.empty(S, k_eff, dtype=torch.long, device=dev) for _ in range(2))
    for start in range(0, S, chunk):
        stop = min(start + chunk, S)
        ids = src_ids[start:stop]
        for block, vals, idx in (
            (sc.a_by_source(ids), best_a, best_d),  # [c sources, d_vocab dests]
            (sc.o_by_source(ids), best_o, best_t),  # [c sources, d_vocab outs]
        ):
            if drop is not None:
                block += drop
            torch.topk(block, k_eff, dim=1, out=(vals[start:stop], idx[start:stop]))
            del block
    best_a *= sc.scale
    best_o -= sc.ov_mean(src_ids)[:, None]
    cand = torch.sigmoid(best_a)[:, :, None] * best_o[:, None, :]  # [src, k (dest), k (out)]
    if keep is not None:
        cand[~keep[src_ids]] = -math.inf
    # Stable sorts, not topk: where sigmoid(attention) rounds to 1 (fp32, attention > ~17)
    # several destinations tie on score, and a tie must go to the higher attention (the
    # exact order; ranks are by attention, source-major), whatever k is: otherwise
    # `qkov circuits -k 10` and analyze's 8 name different destinations for one score.
    if per_source is None:
        n = min(k, int(torch.isfinite(cand).sum()))
        flat = cand.flatten().sort(descending=True, stable=True).indices[:n]
        s, i, j = torch.unravel_index(flat, cand.shape)  # source, dest rank, out rank
    else:  # the best per_source of each source, then the k best of those
        m = min(per_source, k_eff * k_eff)
        vals, idx = cand.flatten(1).sort(dim=1, descending=True, stable=True)
        vals, idx = vals[:, :m], idx[:, :m]  # [src, m]: flat (dest rank, out rank)
        n = min(k, int(torch.isfinite(vals).sum()))
        flat = vals.flatten().sort(descending=True, stable=True).indices[:n]
        s, r = torch.unravel_index(flat, vals.shape)  # source, rank among its m best
        i, j = torch.unravel_index(idx[s, r], (k_eff, k_eff))
    out = [
        sc.trigram(int(src_ids[r]), int(best_d[r, di]), int(best_t[r, oi]))
        for r, di, oi in zip(s.tolist(), i.tolist(), j.tolist(), strict=True)
    ]
    # Re-score exactly (scalar path) and sort: chunked and scalar rounding can differ slightly.
    # Equal scores (a saturated sigmoid) go by attention, as above.
    return SkipTrigramTable(sorted(out, key=lambda t: (-t.score, -t.attention)))


GROUP_ELEMENTS = 2**26  # values of a group's E W_Q (and of its W_O W_U): 256 MiB in fp32


def head_factors(
    model: AttnOnlyTransformer, heads: Iterable[tuple[int, int]]
) -> Iterator[tuple[int, int, tuple[Tensor, Tensor]]]:
    """(layer, head, factors) for each head of `heads` [(layer, head)], in their order:
    factors = (E W_Q [d_vocab, d_head], W_O W_U [d_head, d_vocab]) of the folded model, what
    a head's skip-trigrams (`skip_trigrams(factors=)`) and OV top-1 fraction
    (`ov_statistics(W_OU=)`) read over the whole vocabulary, formed for a run of consecutive
    heads of one layer at once (up to GROUP_ELEMENTS values a side): one wide matmul instead
    of a d_head-wide one per head, which runs at 55-75% of the wide one's rate on this CPU
    (at 128k tokens, d_model 2048, the two products take 0.64 s a head alone, 0.41 s a head
    in a group of 8); a head alone gets its own, so its two users share them. Every head is
    checked before the first is yielded; a run's factors live until its last head is done."""
    heads = [(int(l), int(h)) for l, h in heads]
    for l, h in heads:
        check_head(model, l, h)
    per_group = max(1, GROUP_ELEMENTS // (model.cfg.d_vocab * model.cfg.d_head))
    i = 0
    while i < len(heads):
        layer = heads[i][0]
        run = [heads[i][1]]  # consecutive heads of this layer, in order
        while (
            len(run) < per_group
            and i + len(run) < len(heads)
            and heads[i + len(run)] == (layer, run[-1] + 1)
        ):
            run.append(run[-1] + 1)
        factors = _layer_factors(model, layer, run[0], len(run))
        for j, head in enumerate(run):
            yield layer, head, (factors[0][:, j], factors[1][j])
        del factors
        i += len(run)


def _layer_factors(
    model: AttnOnlyTransformer, layer: int, first: int, n: int
) -> tuple[Tensor, Tensor]:
    """Of heads first .. first+n-1 of one layer (folded weights, no biases): E W_Q as
    [d_vocab, n, d_head] and W_O W_U as [n, d_head, d_vocab], each one matmul."""
    m = folded(model)
    w, c = m.weights(), m.cfg
    E = token_embedding(m)
    W_Q = w["W_Q"][layer, first : first + n]  # [n, d_model, d_head]
    EQ = E @ W_Q.permute(1, 0, 2).reshape(c.d_model, n * c.d_head)
    OU = w["W_O"][layer, first : first + n].reshape(n * c.d_head, c.d_model) @ w["W_U"]
    return EQ.view(-1, n, c.d_head), OU.view(n, c.d_head, -1)


@torch.no_grad()
def factoring_bugs(
    model: AttnOnlyTransformer,
    layer: int,
    head: int,
    k: int = 20,
    trigrams: list[SkipTrigram] | None = None,
) -> list[FactoringBug]:
    """Pairs of top trigrams sharing a source (different destination and out), with the
    crossed trigrams the factored head predicts too, sorted by the larger crossed score.

    `keep ... in -> mind` and `keep ... at -> bay` give `keep ... in -> bay` with score
    sigmoid(a[in, keep]) * o[keep, bay] > 0: the head cannot express the pairing."""
    trigrams = trigrams if trigrams is not None else skip_trigrams(model, layer, head, k)
    sc = HeadScorer(model, layer, head)
    bugs = []
    for i, x in enumerate(trigrams):
        for y in trigrams[i + 1 :]:
            if x.source != y.source or x.destination == y.destination or x.out == y.out:
                continue
            bugs.append(
                FactoringBug(
                    first=x,
                    second=y,
                    crossed=sc.trigram(x.source, x.destination, y.out),
                    crossed_reverse=sc.trigram(x.source, y.destination, x.out),
                )
            )
    return sorted(bugs, key=lambda b: -max(b.crossed.score, b.crossed_reverse.score))
