"""Skip-trigrams against a brute-force vocab^3 reference, and a planted factoring bug."""

import json
import math

import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel

from qkov import AttnOnlyTransformer, ModelConfig
from qkov.errors import QkovError
from qkov.split_tokens import split_token_trigrams
from qkov.trigrams import factoring_bugs, skip_trigrams, token_str


def dense_trigram_scores(model: AttnOnlyTransformer, layer: int, head: int) -> torch.Tensor:
    """score[s, d, t] = sigmoid(a[d, s]) * o[s, t], formed whole (small vocab only)."""
    W = {k: v.double() for k, v in model.weights().items()}
    E, U = W["W_E"], W["W_U"]
    QK = E @ W["W_Q"][layer, head] @ W["W_K"][layer, head].T @ E.T  # [dest, src]
    OV = E @ W["W_V"][layer, head] @ W["W_O"][layer, head] @ U  # [src, out]
    a = (QK - QK.mean(-1, keepdim=True)) / math.sqrt(model.cfg.d_head)
    o = OV - OV.mean(-1, keepdim=True)
    return torch.sigmoid(a.T)[:, :, None] * o[:, None, :]


@pytest.mark.parametrize("chunk_size", [3, None])
def test_top_k_matches_brute_force(chunk_size):
    cfg = ModelConfig(n_layers=2, n_heads=2, d_model=16, n_ctx=8, d_vocab=25, init_std=0.5)
    model = AttnOnlyTransformer(cfg)
    for layer, head in [(0, 0), (0, 1), (1, 1)]:
        ref = dense_trigram_scores(model, layer, head)
        want = ref.flatten().topk(15).values
        got = skip_trigrams(model, layer, head, k=15, chunk_size=chunk_size)
        assert len(got) == 15
        torch.testing.assert_close(
            torch.tensor([t.score for t in got], dtype=torch.float64), want, rtol=1e-4, atol=1e-5
        )
        for t in got:
            assert float(ref[t.source, t.destination, t.out]) == pytest.approx(t.score, rel=1e-4)
            assert t.source_str == f"[{t.source}]"


@pytest.mark.parametrize("per_source", [1, 2])
def test_per_source_cap_matches_brute_force(per_source):
    cfg = ModelConfig(n_layers=1, n_heads=2, d_model=16, n_ctx=8, d_vocab=25, init_std=0.5)
    model = AttnOnlyTransformer(cfg)
    ref = dense_trigram_scores(model, 0, 1)
    # Brute force: each source's per_source best scores, then the 10 best of all those.
    want = ref.flatten(1).topk(per_source, dim=1).values.flatten().topk(10).values
    got = skip_trigrams(model, 0, 1, k=10, per_source=per_source)
    torch.testing.assert_close(
        torch.tensor([t.score for t in got], dtype=torch.float64), want, rtol=1e-4, atol=1e-5
    )
    sources = [t.source for t in got]
    assert max(sources.count(s) for s in sources) <= per_source


@pytest.mark.parametrize("per_source", [None, 1])
def test_min_count_ranks_only_tokens_seen_often_enough(per_source):
    """With token counts, every token of every trigram (source, destination, out) is one seen
    >= min_count times, and the list is the brute-force top-k over those tokens alone."""
    cfg = ModelConfig(n_layers=1, n_heads=2, d_model=16, n_ctx=8, d_vocab=25, init_std=0.5)
    model = AttnOnlyTransformer(cfg)
    ref = dense_trigram_scores(model, 0, 0)
    # Leave out the tokens of the unfiltered top trigrams, so the filter must change the list.
    top = skip_trigrams(model, 0, 0, k=3)
    rare = {t for tri in top for t in (tri.source, tri.destination, tri.out)}
    model.token_counts = torch.tensor([3 if i in rare else 50 for i in range(25)])
    keep = torch.tensor([i not in rare for i in range(25)])
    got = skip_trigrams(model, 0, 0, k=8, min_count=10, per_source=per_source)
    for t in got:
        assert not rare & {t.source, t.destination, t.out}
    masked = ref.clone()
    masked[~keep] = -math.inf
    masked[:, ~keep] = -math.inf
    masked[:, :, ~keep] = -math.inf
    if per_source is None:
        want = masked.flatten().topk(8).values
    else:
        want = masked.flatten(1).topk(1, dim=1).values.flatten().topk(8).values
    torch.testing.assert_close(
        torch.tensor([t.score for t in got], dtype=torch.float64), want, rtol=1e-4, atol=1e-5
    )
    assert skip_trigrams(model, 0, 0, k=3, min_count=None) == top  # None: no filter
    model.token_counts = None
    with pytest.raises(QkovError, match="token_counts.json"):
        skip_trigrams(model, 0, 0, k=3, min_count=10)


def keep_in_mind_model() -> AttnOnlyTransformer:
    """in/at attend to keep (QK); attending to keep raises mind and bay (OV)."""
    words = ["keep", "in", "at", "mind", "bay", "the", "a", "[UNK]"]
    vocab = {w: i for i, w in enumerate(words)}
    cfg = ModelConfig(
        n_layers=1, n_heads=1, d_model=8, d_head=1, n_ctx=8, d_vocab=8, positional="none"
    )
    e = torch.eye(8)
    keep, in_, at, mind, bay = (e[vocab[w]] for w in ("keep", "in", "at", "mind", "bay"))
    weights = {
        "W_E": e.clone(),
        "W_Q": (4.0 * in_ + 3.0 * at).reshape(1, 1, 8, 1),
        "W_K": keep.reshape(1, 1, 8, 1),
        "W_V": keep.reshape(1, 1, 8, 1),
        "W_O": (5.0 * mind + 4.0 * bay).reshape(1, 1, 1, 8),
        "W_U": e.clone(),
    }
    model = AttnOnlyTransformer.from_weights(cfg, weights)
    model.tokenizer = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    return model


def test_planted_keep_in_mind_and_factoring_bug():
    model = keep_in_mind_model()
    top = skip_trigrams(model, 0, 0, k=4)
    names = {(t.source_str, t.destination_str, t.out_str) for t in top}
    assert names == {(s, d, o) for s in ["keep"] for d in ["in", "at"] for o in ["mind", "bay"]}
    assert top[0].destination_str == "in" and top[0].out_str == "mind"
    assert "'keep' ... 'in' -> 'mind'" in str(top[0])
    intended = [t for t in top if (t.destination_str, t.out_str) in {("in", "mind"), ("at", "bay")}]
    bugs = factoring_bugs(model, 0, 0, trigrams=intended)
    assert len(bugs) == 1
    bug = bugs[0]
    crossed = {
        (t.source_str, t.destination_str, t.out_str, t.score)
        for t in (bug.crossed, bug.crossed_reverse)
    }
    ref = dense_trigram_scores(model, 0, 0)
    keep_in_bay = float(ref[0, 1, 4])
    assert ("keep", "in", "bay") in {c[:3] for c in crossed}
    assert any(
        c[:3] == ("keep", "in", "bay") and c[3] == pytest.approx(keep_in_bay) for c in crossed
    )
    assert keep_in_bay > 0
    json.dumps(bug.to_dict())
    assert len(factoring_bugs(model, 0, 0, k=4)) == 2  # (in,mind)&(at,bay), (in,bay)&(at,mind)


def test_errors_and_decoding():
    model = keep_in_mind_model()
    assert token_str(model, 4) == "bay"
    model.tokenizer = None
    assert token_str(model, 4) == "[4]"
    with pytest.raises(QkovError, match="k must be"):
        skip_trigrams(model, 0, 0, k=0)
    with pytest.raises(QkovError, match="layer 1 does not exist"):
        skip_trigrams(model, 1, 0)


SPLIT_WORDS = [" Ralph", " R", "alph", " Rob", "ob", " Al", "ice", " Alice", " the", "[UNK]"]


def ralph_model(noise: float = 0.05, seed: int = 0) -> AttnOnlyTransformer:
    """One head planted to complete a split word: " R" attends to " Ralph" (QK), attending
    to " Ralph" raises "alph" (OV). Every weight has Gaussian noise, so every trigram of the
    vocabulary has some score."""
    vocab = {w: i for i, w in enumerate(SPLIT_WORDS)}
    V = len(vocab)
    cfg = ModelConfig(
        n_layers=1, n_heads=1, d_model=V, d_head=1, n_ctx=8, d_vocab=V, positional="none"
    )
    e = torch.eye(V)
    g = torch.Generator().manual_seed(seed)

    def noisy(x: torch.Tensor) -> torch.Tensor:
        return x + noise * torch.randn(x.shape, generator=g)

    ralph, r, alph = (e[vocab[w]] for w in (" Ralph", " R", "alph"))
    weights = {
        "W_E": noisy(e),
        "W_Q": noisy(4.0 * r).reshape(1, 1, V, 1),
        "W_K": noisy(ralph).reshape(1, 1, V, 1),
        "W_V": noisy(ralph).reshape(1, 1, V, 1),
        "W_O": noisy(5.0 * alph).reshape(1, 1, 1, V),
        "W_U": noisy(e),
    }
    model = AttnOnlyTransformer.from_weights(cfg, weights)
    model.tokenizer = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    return model


def test_split_token_trigram_ralph_is_found_and_ranked_as_skip_trigrams():
    model = ralph_model()
    found = split_token_trigrams(model, 0, 0, k=3)
    # " Ralph" = " R" + "alph", " Rob" = " R" + "ob", " Alice" = " Al" + "ice"
    assert found.n_candidates == 3
    top = found.trigrams[0]
    assert (top.source_str, top.destination_str, top.out_str) == (" Ralph", " R", "alph")
    assert top.attention > 0 and top.boost > 0 and found.n_favoured >= 1
    # The same score as skip_trigrams (brute force over the dense table).
    ref = dense_trigram_scores(model, 0, 0)
    for t in found.trigrams:
        assert t.score == pytest.approx(float(ref[t.source, t.destination, t.out]), abs=1e-5)
    assert [t.score for t in found.trigrams] == sorted(
        (t.score for t in found.trigrams), reverse=True
    )
    assert skip_trigrams(model, 0, 0, k=1)[0] == top  # here it is the head's best trigram too
    json.dumps(found.to_dict())
    # min_count drops the candidates with a rare token; without a tokenizer there are none.
    model.token_counts = torch.tensor([50, 50, 50, 50, 50, 50, 50, 0, 50, 50])  # " Alice" rare
    assert split_token_trigrams(model, 0, 0, min_count=10).n_candidates == 2
    model.tokenizer = None
    assert split_token_trigrams(model, 0, 0).n_candidates == 0
    with pytest.raises(QkovError, match="k must be"):
        split_token_trigrams(model, 0, 0, k=0)


def test_split_token_trigrams_rank_any_candidates_as_the_dense_tables_do():
    """Given candidates (source, destination, out), the ranking and the count of favoured
    ones (attention > 0 and boost > 0) are those of the dense a and o tables."""
    cfg = ModelConfig(n_layers=2, n_heads=2, d_model=16, n_ctx=8, d_vocab=25, init_std=0.5)
    model = AttnOnlyTransformer(cfg)
    g = torch.Generator().manual_seed(1)
    cand = torch.randint(0, 25, (60, 3), generator=g)
    for layer, head in [(0, 1), (1, 0)]:
        W = {k: v.double() for k, v in model.weights().items()}
        E, U = W["W_E"], W["W_U"]
        QK = E @ W["W_Q"][layer, head] @ W["W_K"][layer, head].T @ E.T  # [dest, src]
        OV = E @ W["W_V"][layer, head] @ W["W_O"][layer, head] @ U  # [src, out]
        s, d, t = cand.unbind(1)
        a = (QK - QK.mean(-1, keepdim=True))[d, s] / math.sqrt(cfg.d_head)
        o = (OV - OV.mean(-1, keepdim=True))[s, t]
        want = (torch.sigmoid(a) * o).topk(7).values
        got = split_token_trigrams(model, layer, head, k=7, candidates=cand)
        assert got.n_candidates == 60 and got.n_favoured == int(((a > 0) & (o > 0)).sum())
        torch.testing.assert_close(
            torch.tensor([x.score for x in got.trigrams], dtype=torch.float64),
            want,
            atol=1e-5,
            rtol=0,
        )


def test_saturated_attention_ties_rank_by_attention_whatever_k():
    """Where sigmoid(attention) rounds to 1 in fp32, destinations tie on score: each tie goes
    to the higher attention (the exact order), so the top 8 are the top 8 of a longer list:
    analysis.json and the explorer (8) name the same trigrams as `qkov circuits -k 10`.
    The shipped attn2's L0H0 has such ties (' m' ... ' p' / ' w' / ' P' -> 'apping')."""
    import qkov

    model = qkov.load(qkov.shipped("attn2"))

    def key(t):
        return (t.source, t.destination, t.out)

    for per_source in (2, None):
        short = skip_trigrams(model, 0, 0, k=8, per_source=per_source, min_count=100)
        long = skip_trigrams(model, 0, 0, k=10, per_source=per_source, min_count=100)
        assert [key(t) for t in short] == [key(t) for t in long[:8]]
        pairs = list(zip(long, long[1:], strict=False))
        assert any(a.score == b.score for a, b in pairs)  # the ties are there
        for a, b in pairs:
            assert (a.score, a.attention) >= (b.score, b.attention)


@pytest.mark.parametrize("group_elements", [1, 2 * 40 * 8, 2**26])
def test_trigrams_of_heads_are_each_heads_own_with_the_factors_formed_by_group(
    group_elements, monkeypatch
):
    """skip_trigrams with head_factors' factors gives each head's own table (the same trigrams and
    scores: a general model with biases and a norm fold, a sample of sources, per_source),
    whatever the group size; the vocabulary-wide factors of a run of consecutive heads of one
    layer are formed in one call, never across layers or gaps."""
    from factories import general_model
    from qkov import trigrams

    model = general_model(2, n_heads=3)  # d_vocab 40, d_head 8
    heads = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (1, 1)]
    kw = dict(k=6, per_source=2, n_sources=25, seed=3)
    want = [skip_trigrams(model, l, h, **kw) for l, h in heads]
    calls = []
    form = trigrams._layer_factors
    monkeypatch.setattr(trigrams, "GROUP_ELEMENTS", group_elements)
    monkeypatch.setattr(trigrams, "_layer_factors", lambda m, *a: calls.append(a) or form(m, *a))
    got = [
        skip_trigrams(model, l, h, **kw, factors=f)
        for l, h, f in trigrams.head_factors(model, heads)
    ]
    for g, w in zip(got, want, strict=True):
        assert [(t.source, t.destination, t.out) for t in g] == [
            (t.source, t.destination, t.out) for t in w
        ]
        torch.testing.assert_close(
            torch.tensor([t.score for t in g]), torch.tensor([t.score for t in w])
        )
    EQ, OU = form(model, 0, 0, 3)  # a group's factors are each head's own (b_Q included)
    for h in range(3):
        alone, grouped = (
            trigrams.HeadScorer(model, 0, h),
            trigrams.HeadScorer(model, 0, h, (EQ[:, h], OU[h])),
        )
        torch.testing.assert_close(grouped.q, alone.q)
        torch.testing.assert_close(grouped.OU, alone.OU)
    alone = [(1, 0, 1), (1, 2, 1), (1, 1, 1)]  # (1, 2) and (1, 1): not in order
    expected = {
        1: [(0, 0, 1), (0, 1, 1), (0, 2, 1), *alone],
        2 * 40 * 8: [(0, 0, 2), (0, 2, 1), *alone],
        2**26: [(0, 0, 3), *alone],
    }
    assert calls == expected[group_elements]
    with pytest.raises(QkovError, match="head 7 does not exist"):  # before the first table
        next(trigrams.head_factors(model, [(0, 0), (1, 7)]))
    assert len(calls) == len(expected[group_elements])
