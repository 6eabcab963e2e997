"""Head detectors on hand-built models with planted heads (qkov.heads)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from factories import general_model, random_tokens
from qkov import AttnOnlyTransformer, ModelConfig, QkovError, Transformer
from qkov.circuits import induction_qk_term
from qkov.classification import classify_heads
from qkov.data.probes import induction_probe, repeated_random_tokens
from qkov.heads import (
    head_scores,
    induction_score,
    prefix_matching_score,
)

V, N_CTX = 32, 32  # vocab big enough for a probe of n_ctx distinct tokens


def _raw(d_head: int, scaled: float) -> float:
    """Per-side weight c with c*c / sqrt(d_head) = scaled (the model's score scale)."""
    return math.sqrt(scaled * math.sqrt(d_head))


def build_induction_model(
    match: float = 15.0, penalty: float = 10.0, unembed: float = 12.0
) -> AttnOnlyTransformer:
    """A hand-built 2-layer, 2-head induction circuit (shortformer).

    Residual stream [d_model = 3V + n_ctx]: token dims [0, V), previous-token dims [V, 2V),
    output dims [2V, 3V), position dims [3V, 3V + n_ctx) (W_pos, q/k inputs only).
      L0H0 previous-token head: query at i (position dims) matches key at i-1; its OV
           copies the token into the previous-token dims.
      L1H0 induction head: query reads the current token, key reads the previous-token dims
           (K-composition with L0H0); a key penalty at position 0 (whose previous-token
           dims hold its own token) and OV copying the token to the output dims = W_U's input.
      L0H1, L1H1: left at the small random init (distractors).
    Scores are in units after the 1/sqrt(d_head) scale."""
    T, P, O, S = 0, V, 2 * V, 3 * V
    d_head = max(V + 1, N_CTX)
    cfg = ModelConfig(
        n_layers=2, n_heads=2, d_model=3 * V + N_CTX, d_head=d_head, n_ctx=N_CTX, d_vocab=V
    )
    model = AttnOnlyTransformer(cfg)
    w = {k: v.clone() for k, v in model.weights().items()}
    for k in ("W_E", "W_pos", "W_U"):
        w[k].zero_()
    for k in ("W_Q", "W_K", "W_V", "W_O"):
        w[k][:, 0].zero_()
    tok, pos = torch.arange(V), torch.arange(N_CTX - 1)
    c = _raw(d_head, match)
    w["W_E"][tok, T + tok] = 1
    w["W_pos"][torch.arange(N_CTX), S + torch.arange(N_CTX)] = 1
    w["W_U"][O + tok, tok] = unembed
    # L0H0: position i+1 queries position i.
    w["W_Q"][0, 0][S + pos + 1, pos + 1] = c
    w["W_K"][0, 0][S + pos, pos + 1] = c
    w["W_V"][0, 0][T + tok, tok] = 1
    w["W_O"][0, 0][tok, P + tok] = 1
    # L1H0: current token (query) against the previous token at the source (key).
    w["W_Q"][1, 0][T + tok, tok] = c
    w["W_K"][1, 0][P + tok, tok] = c
    w["W_Q"][1, 0][T + tok, V] = 1  # every query has a 1 in head dim V ...
    w["W_K"][1, 0][S + 0, V] = -penalty * math.sqrt(d_head)  # ... which position 0's key punishes
    w["W_V"][1, 0][T + tok, tok] = 1
    w["W_O"][1, 0][tok, O + tok] = 1
    model.load_weights(w)
    return model


def planted_embedding(model: AttnOnlyTransformer) -> tuple[dict, torch.Tensor]:
    """A copy of the model's weights with one-hot W_E (token dims [0, V)), W_pos (dims after
    2V) and a W_U that reads output dims [V, 2V) as the tokens; and the token ids."""
    w = {k: v.clone() for k, v in model.weights().items()}
    tok = torch.arange(V)
    for k in ("W_E", "W_pos", "W_U"):
        w[k].zero_()
    w["W_E"][tok, tok] = 1
    w["W_pos"][torch.arange(N_CTX), 2 * V + torch.arange(N_CTX)] = 1
    w["W_U"][V + tok, tok] = 10.0
    return w, tok


def one_layer_model(d_head: int = V + N_CTX) -> tuple[AttnOnlyTransformer, dict]:
    """A 1-layer, 2-head model: token dims [0, V), output dims [V, 2V), positions after."""
    cfg = ModelConfig(
        n_layers=1, n_heads=2, d_model=2 * V + N_CTX, d_head=d_head, n_ctx=N_CTX, d_vocab=V
    )
    model = AttnOnlyTransformer(cfg)
    w, tok = planted_embedding(model)
    for k in ("W_Q", "W_K", "W_V", "W_O"):
        w[k][:, 0].zero_()
    return model, w


# ---------------------------------------------------------------------------- probe batch
def test_repeated_random_tokens_shape_seed_and_prefix():
    a = repeated_random_tokens(50, batch=4, half_len=10, seed=3, prefix=[0])
    assert a.shape == (4, 21)
    assert (a[:, 0] == 0).all() and (a[:, 1:] != 0).all()
    assert torch.equal(a[:, 1:11], a[:, 11:])
    for row in a[:, 1:11]:  # no repeats inside a half
        assert len(set(row.tolist())) == 10
    assert torch.equal(a, repeated_random_tokens(50, 4, 10, 3, prefix=[0]))
    assert not torch.equal(a, repeated_random_tokens(50, 4, 10, 4, prefix=[0]))


def test_induction_probe_varies_the_period():
    probe = induction_probe(100, batch=16, seq_len=41, seed=2, prefix=[0])
    t, hs = probe.tokens, probe.half_lens
    assert t.shape == (16, 41) and (t[:, 0] == 0).all() and (t[:, 1:] != 0).all()
    assert len(set(hs.tolist())) > 3 and hs.min() >= 10 and hs.max() <= 20
    for row, h in zip(t, hs.tolist(), strict=True):
        assert torch.equal(row[41 - 2 * h : 41 - h], row[41 - h :])
        assert len(set(row[1 : 41 - h].tolist())) == 40 - h  # filler + block all distinct
    assert torch.equal(t, induction_probe(100, 16, 41, 2, prefix=[0]).tokens)


def test_fixed_offset_positional_head_fools_fixed_probe_only():
    """A head that attends h-1 back through W_pos looks like induction on a fixed period."""
    model, w = one_layer_model()
    h, pos = 12, torch.arange(N_CTX)
    c = _raw(V + N_CTX, 15.0)
    w["W_Q"][0, 0][2 * V + pos, V + pos] = c
    w["W_K"][0, 0][2 * V + pos[: N_CTX - h + 1], V + pos[h - 1 :]] = c  # key j <-> query j+h-1
    model.load_weights(w)
    fixed = repeated_random_tokens(V, batch=8, half_len=h, seed=0)
    assert head_scores(model, fixed, half_len=h).induction[0, 0] > 0.95  # fooled
    s = head_scores(model, batch=16, seq_len=N_CTX)  # the standard, varied-period probe
    assert s.induction[0, 0] < 0.4 and s.positional[0, 0] > 0.95
    assert classify_heads(model, batch=16).record(0, 0).label == "positional"


def test_induction_score_per_row_half_len_matches_loop():
    g = torch.Generator().manual_seed(0)
    pattern = torch.rand(3, 2, 10, 10, generator=g).tril()
    pattern = pattern / pattern.sum(-1, keepdim=True)
    hs = torch.tensor([2, 5, 3])
    want = torch.zeros(2)
    for b, h in enumerate(hs.tolist()):
        for i in range(10 - h, 10):
            want += pattern[b, :, i, i - h + 1]
    torch.testing.assert_close(induction_score(pattern, None, hs), want / int(hs.sum()))
    with pytest.raises(QkovError):
        induction_score(pattern, None, 6)


def test_repeated_random_tokens_bad_input():
    with pytest.raises(QkovError):
        repeated_random_tokens(10, 2, 1)
    with pytest.raises(QkovError):
        repeated_random_tokens(10, 2, 4, prefix=[10])


# ---------------------------------------------------------------------------- acceptance
def test_handbuilt_induction_model_predicts_second_half():
    model = build_induction_model()
    h = 15
    tokens = repeated_random_tokens(V, batch=32, half_len=h, seed=1)
    logits = model(tokens)
    # Logits at h..2h-2 predict tokens h+1..2h-1: the predictable part of the second half.
    loss = F.cross_entropy(logits[:, h:-1].flatten(0, 1), tokens[:, h + 1 :].flatten())
    assert loss < 0.1


def test_induction_qk_term_matches_dense_and_errors():
    model = build_induction_model()
    term = induction_qk_term(model, 1, 0, 0, 0)
    w = model.weights()
    OV0 = w["W_V"][0, 0] @ w["W_O"][0, 0]
    QK1 = w["W_Q"][1, 0] @ w["W_K"][1, 0].T
    dense = w["W_E"] @ QK1 @ (w["W_E"] @ OV0).T  # [destination token, moved token]
    torch.testing.assert_close(term.dense(), dense)
    assert torch.allclose(dense, dense[0, 0] * torch.eye(V))  # pure token matching
    with pytest.raises(QkovError):
        induction_qk_term(model, 0, 0, 1, 0)


# ---------------------------------------------------------------------------- planted heads
def test_previous_token_and_induction_scores_planted_vs_random():
    s = head_scores(build_induction_model(), batch=8)
    assert s.measured_on == "random_tokens"
    assert s.previous_token[0, 0] > 0.99 and s.previous_token[1, 0] < 0.2
    assert s.induction[1, 0] > 0.99 and s.induction[0, 0] < 0.05
    assert s.prefix_matching[1, 0] > 0.99
    for l in (0, 1):  # random distractor heads
        assert s.previous_token[l, 1] < 0.2 and s.induction[l, 1] < 0.2
    assert s.best("induction")[1:] == (1, 0) and s.best("previous_token")[1:] == (0, 0)
    bos = repeated_random_tokens(V, batch=8, half_len=15, seed=5, prefix=[0])
    p = head_scores(build_induction_model(), bos, half_len=15)
    assert p.induction[1, 0] > 0.99 and p.induction[0, 0] < 0.05


def test_prefix_matching_on_text_with_repeats():
    model = build_induction_model()
    g = torch.Generator().manual_seed(0)
    text = torch.randint(V, (8, N_CTX), generator=g)  # many repeats, no known structure
    s = head_scores(model, text)
    assert s.measured_on == "tokens"
    torch.testing.assert_close(s.induction, s.prefix_matching)
    assert s.prefix_matching[1, 0] > 0.85 and s.prefix_matching[0, 1] < 0.3


def test_prefix_matching_counts_token_after_each_earlier_occurrence():
    tokens = torch.tensor([[5, 1, 5, 2, 5]])
    pattern = torch.zeros(1, 1, 5, 5)
    pattern[0, 0, 4, 1] = 0.25  # after the 5 at 0
    pattern[0, 0, 4, 3] = 0.5  # after the 5 at 2
    pattern[0, 0, 4, 4] = 0.25
    pattern[0, 0, 2, 1] = 1.0  # the 5 at 2: after the 5 at 0
    pattern[0, 0, [0, 1, 3], [0, 1, 3]] = 1.0
    assert float(prefix_matching_score(pattern, tokens)) == pytest.approx((1.0 + 0.75) / 2)


def test_duplicate_token_score_planted_vs_random():
    model, w = one_layer_model()
    tok, pos = torch.arange(V), torch.arange(N_CTX)
    c = _raw(V + N_CTX, 15.0)
    w["W_Q"][0, 0][tok, tok] = c  # same token ...
    w["W_K"][0, 0][tok, tok] = c
    w["W_Q"][0, 0][2 * V + pos, V + pos] = c  # ... but not itself
    w["W_K"][0, 0][2 * V + pos, V + pos] = -c
    model.load_weights(w)
    s = head_scores(model, batch=8, seq_len=24)
    assert s.duplicate_token[0, 0] > 0.95 and s.duplicate_token[0, 1] < 0.2
    assert s.induction[0, 0] < 0.05 and s.previous_token[0, 0] < 0.2
    assert classify_heads(model, batch=8).record(0, 0).label == "duplicate_token"


def test_copying_score_planted_copy_and_anti_copy_vs_random():
    model, w = one_layer_model()
    tok = torch.arange(V)
    w["W_V"][0, 0][tok, tok] = 1
    w["W_O"][0, 0][tok, V + tok] = 1  # copy: raises the attended token's logit
    w["W_V"][0, 1][tok, tok] = 1
    w["W_O"][0, 1][tok, V + tok] = -1  # anti-copy: lowers it
    model.load_weights(w)
    s = head_scores(model, batch=8)
    assert s.copying[0, 0] > 0.99 and s.copying[0, 1] < -0.99
    cfg = ModelConfig(n_layers=2, n_heads=4, d_model=32, n_ctx=N_CTX, d_vocab=64, init_std=0.3)
    rnd = head_scores(AttnOnlyTransformer(cfg), batch=8)
    assert rnd.copying.abs().max() < 0.4
    cls = classify_heads(model, batch=8)
    # Both heads attend uniformly (zero QK): copying wins over positional for head 0 only.
    assert cls.record(0, 0).label == "copying" and cls.record(0, 1).label == "positional"


def test_positional_score_uniform_vs_token_driven():
    s = head_scores(build_induction_model(), batch=8)
    assert s.positional[0, 1] > 0.99  # random small init: near-uniform attention
    text = torch.randint(V, (8, N_CTX), generator=torch.Generator().manual_seed(1))
    t = head_scores(build_induction_model(), text)
    assert t.positional[0, 0] > 0.99 and t.positional[1, 0] < 0.7  # position vs token driven


def test_scores_serialise_and_zero_layer_model():
    s = head_scores(build_induction_model(), batch=4)
    d = s.to_dict()
    assert len(d["induction"]) == 2 and len(d["induction"][0]) == 2 and d["seq_len"] == 32
    empty = head_scores(AttnOnlyTransformer(ModelConfig(n_layers=0, n_ctx=16, d_vocab=32)))
    assert empty.induction.shape == (0, 4)


# ---------------------------------------------------------------------------- general models
def planted_general_model() -> Transformer:
    """A 2-layer model with MLPs, biases and layernorm (tests/factories.py's general_model:
    random biases and norm weights) whose layer-0 heads have planted OV circuits: L0H0
    copies the token it attends to into output dims that W_U reads as that token, L0H1 does
    the opposite. Token dims [0, V), output dims [V, 2V), positions after (in the stream)."""
    model = general_model(
        2, n_heads=2, d_model=2 * V + N_CTX, d_mlp=16, n_ctx=N_CTX, d_vocab=V, init_std=0.02
    )
    w, tok = planted_embedding(model)
    for k in ("W_Q", "W_K", "W_V", "W_O"):
        w[k][0].zero_()
    for h, sign in ((0, 1.0), (1, -1.0)):
        w["W_V"][0, h][tok, tok] = 1
        w["W_O"][0, h][tok, V + tok] = sign
    model.load_weights(w)
    return model


def brute_force_copying(model: Transformer, tokens: torch.Tensor) -> torch.Tensor:
    """The copying score [n_layers, n_heads] from the model's own activations, unfolded:
    each source's value vector (hook v.{l}) through W_O, then the final layernorm taken
    linearly at that position's frozen scale (centre, divide, ln_final_w), then W_U; the
    rank of the source token in it, one position at a time, in float64."""
    _, cache = model.run_with_cache(tokens)
    w = {k: v.double() for k, v in model.weights().items()}
    B, n = tokens.shape
    L, H, V_ = model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_vocab
    out = torch.zeros(L, H, dtype=torch.float64)
    for l in range(L):
        for h in range(H):
            total = 0.0
            for b in range(B):
                for j in range(n):
                    u = cache[f"v.{l}"][b, h, j].double() @ w["W_O"][l, h]  # [d_model]
                    u = (u - u.mean()) / cache["ln_final_scale"][b, j, 0].double()
                    e = (u * w["ln_final_w"]) @ w["W_U"]  # [d_vocab]
                    own = e[tokens[b, j]]
                    rank = float((e > own).sum()) + 0.5 * float((e == own).sum() - 1)
                    c = 1 - 2 * rank / (V_ - 1)
                    total += c * float(cache[f"pattern.{l}"][b, h, :, j].sum())
            out[l, h] = total / (B * n)
    return out


def test_copying_score_on_a_general_model_planted_and_brute_force():
    """With MLPs, biases and layernorm the copying score reads the value vectors (b_V in)
    through the folded W_O, W_U: the planted copier scores high, the anti-copier low, a
    random general model near 0, and every head equals the brute-force score computed
    from the unfolded model's own activations."""
    model = planted_general_model()
    s = head_scores(model, batch=8)
    assert s.copying[0, 0] > 0.95 and s.copying[0, 1] < -0.95
    cls = classify_heads(model, batch=8, n_baseline=20)
    assert cls.record(0, 0).label == "copying" and cls.record(0, 1).label != "copying"
    tokens = induction_probe(V, 4, N_CTX, seed=0).tokens
    got = head_scores(model, tokens).copying.double()
    torch.testing.assert_close(got, brute_force_copying(model, tokens), atol=1e-4, rtol=0)
    rnd = general_model(2, n_heads=3, d_model=24, d_vocab=64, init_std=0.3)
    tokens = random_tokens(rnd, batch=4)
    got = head_scores(rnd, tokens).copying.double()
    torch.testing.assert_close(got, brute_force_copying(rnd, tokens), atol=1e-4, rtol=0)
    assert head_scores(rnd, batch=8).copying.abs().max() < 0.4


def test_qkov_heads_text_table_shows_an_undefined_score_as_a_dash():
    """On one sequence the positional score is not defined (NaN): `qkov heads --text-file`'s
    table prints '-' for it and says so, as the probe's table does, never 'nan'."""
    from qkov.cli.heads import _text_table

    model = build_induction_model()
    one = head_scores(model, random_tokens(model, batch=1))
    assert math.isnan(one.positional[0, 0]) and math.isfinite(one.previous_token[0, 0])
    table = _text_table(one, 2, 2)
    rows = table.splitlines()[1:5]
    assert "nan" not in table and all(r.split()[-1] == "-" for r in rows)
    heads = [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert all(
        r.split()[1] == f"{one.previous_token[l, h]:.3f}"
        for r, (l, h) in zip(rows, heads, strict=True)
    )
    assert table.endswith("; - : not defined on this text)")
    two = _text_table(head_scores(model, random_tokens(model, batch=2)), 2, 2)
    cells = [c for r in two.splitlines()[1:5] for c in r.split()[1:]]
    assert len(cells) == 20 and "-" not in cells and two.endswith("score)")
