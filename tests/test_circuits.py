"""Circuits against dense references and planted heads."""

import json
import math

import pytest
import torch

import factories
from qkov import AttnOnlyTransformer, ModelConfig
from qkov.circuits import (
    W_OV,
    W_QK,
    direct_path,
    embedding_rms,
    final_norm_scale,
    ov_circuit,
    positional_qk,
    qk_circuit,
    qk_positional_terms,
    token_embedding,
)
from qkov.errors import QkovError
from qkov.fold import fold_layernorm
from qkov.model import rms_scale

random_model = factories.circuit_model


# ---------------------------------------------------------------------- circuits
def test_circuits_match_dense_products():
    model = random_model(2, seed=4)
    W = model.weights()
    E, U = W["W_E"], W["W_U"]
    qk, ov = W_QK(model), W_OV(model)
    assert qk.shape == ov.shape == (2, 2, 16, 16)
    for l in range(2):
        for h in range(2):
            Q, K, V, O = (W[n][l, h] for n in ("W_Q", "W_K", "W_V", "W_O"))
            torch.testing.assert_close(qk[l, h].dense(), Q @ K.T)
            torch.testing.assert_close(ov[l, h].dense(), V @ O)
            torch.testing.assert_close(qk_circuit(model, l, h).dense(), E @ Q @ K.T @ E.T)
            torch.testing.assert_close(ov_circuit(model, l, h).dense(), E @ V @ O @ U)
    torch.testing.assert_close(direct_path(model).dense(), E @ U)
    zero = random_model(0, seed=4)
    tokens = torch.arange(10)
    torch.testing.assert_close(zero(tokens)[0], direct_path(zero)[tokens].dense())


@pytest.mark.parametrize("positional", ["shortformer", "standard"])
def test_positional_qk_terms_reproduce_layer0_scores(positional):
    model = random_model(1, positional, seed=5)
    tokens = torch.randint(0, 40, (1, 10), generator=torch.Generator().manual_seed(3))
    _, cache = model.run_with_cache(tokens, names=["scores.0"])
    t, p = tokens[0], torch.arange(10)
    for h in range(2):
        terms = qk_positional_terms(model, 0, h)
        total = (
            terms.token_token[t][:, t].dense()
            + terms.token_pos[t][:, p].dense()
            + terms.pos_token[p][:, t].dense()
            + terms.pos_pos[p][:, p].dense()
        ) / math.sqrt(8)
        got = cache["scores.0"][0, h]
        mask = torch.ones(10, 10, dtype=torch.bool).tril()
        torch.testing.assert_close(total[mask], got[mask])
    assert terms.pos_pos.shape == (10, 10) and terms.token_pos.shape == (40, 10)
    json.dumps(terms.to_dict())


def test_positional_qk_is_the_pos_pos_term_without_the_token_factors(monkeypatch):
    """positional_qk (the report's position x position view) is qk_positional_terms' pos_pos
    term over sqrt(d_head), on a folded layernorm model with biases, and forms nothing of
    vocabulary size (E W_Q at 128k tokens was ~0.5 s a head)."""
    import qkov.circuits as circuits
    from factories import general_model

    model = general_model(2)
    want = [qk_positional_terms(model, 0, h).pos_pos.dense() / math.sqrt(8) for h in range(3)]
    monkeypatch.setattr(circuits, "token_embedding", None)  # a call would raise
    for h in range(3):
        torch.testing.assert_close(positional_qk(model, 0, h), want[h])
        torch.testing.assert_close(positional_qk(model, 0, h, 5), want[h][:5, :5])
    with pytest.raises(QkovError, match="positional='rotary'"):
        positional_qk(general_model(1, positional="rotary", normalization="rms"), 0, 0)


def test_bad_head_and_positional_errors():
    model = random_model(1, "none")
    with pytest.raises(QkovError, match="layer 3 does not exist"):
        ov_circuit(model, 3, 0)
    with pytest.raises(QkovError, match="head 5 does not exist"):
        qk_circuit(model, 0, 5)
    with pytest.raises(QkovError, match="positional='none'"):
        qk_positional_terms(model, 0, 0)


# ---------------------------------------------------------------------- CLI
def test_cli_circuits_table_and_errors(tmp_path, capsys):
    from qkov import save_model
    from qkov.cli import main
    from test_eigenvalues import planted_model

    save_model(planted_model(+1.0, 30, 8), tmp_path / "m")
    assert (
        main(["circuits", str(tmp_path / "m"), "-k", "3", "--json", str(tmp_path / "c.json")]) == 0
    )
    out = capsys.readouterr().out
    assert "L0H0" in out and "+1.000" in out and "top 3 skip-trigrams" in out
    data = json.loads((tmp_path / "c.json").read_text())
    assert data["heads"][0]["top1_fraction"] == 1.0 and len(data["heads"][0]["skip_trigrams"]) == 3
    assert main(["circuits", str(tmp_path / "missing")]) == 2
    assert main(["circuits", str(tmp_path / "m"), "-k", "0"]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "--top-k must be >= 1" in err


def test_cli_circuits_forms_each_layers_w_o_w_u_once_for_both_tables(tmp_path, monkeypatch):
    """`qkov circuits` reads each head's W_O W_U for its top-1 fraction and its skip-trigrams
    from one product per layer (`head_factors`), with the same numbers as each head's own
    (`ov_statistics` and `skip_trigrams` alone)."""
    import qkov.circuits as circuits
    import qkov.trigrams as trigrams
    from factories import general_model
    from qkov import save_model
    from qkov.cli import main
    from qkov.eigenvalues import ov_statistics
    from qkov.trigrams import skip_trigrams

    model = general_model(2, n_heads=3)
    save_model(model, tmp_path / "m")
    calls, given = [], []
    form, ov = trigrams._layer_factors, circuits.ov_circuit
    monkeypatch.setattr(trigrams, "_layer_factors", lambda m, *a: calls.append(a) or form(m, *a))
    monkeypatch.setattr(
        "qkov.eigenvalues.ov_circuit",
        lambda *a, W_OU=None, **k: given.append(W_OU is not None) or ov(*a, W_OU=W_OU, **k),
    )
    out = tmp_path / "c.json"
    assert main(["circuits", str(tmp_path / "m"), "-k", "4", "--json", str(out)]) == 0
    assert calls == [(0, 0, 3), (1, 0, 3)] and given == [True] * 6
    monkeypatch.undo()
    for rec in json.loads(out.read_text())["heads"]:
        l, h = rec["layer"], rec["head"]
        alone = ov_statistics(model, l, h)
        assert rec["top1_fraction"] == alone.top1_fraction
        assert rec["eigenvalue_score"] == pytest.approx(alone.eigenvalue_score)
        want = [t.to_dict() for t in skip_trigrams(model, l, h, k=4, per_source=2)]
        assert [(t["source"], t["destination"], t["out"]) for t in rec["skip_trigrams"]] == [
            (t["source"], t["destination"], t["out"]) for t in want
        ]


def test_rms_token_circuits_are_what_the_first_layer_reads():
    """normalization="rms": the token QK circuit gives layer 0's scores exactly, and the
    0-layer direct path gives the logits exactly (W_E rows divided by their RMS)."""
    model = random_model(1, "none", norm="rms", std=0.7)
    tokens = torch.randint(0, 40, (2, 10), generator=torch.Generator().manual_seed(3))
    _, cache = model.run_with_cache(tokens)
    for h in range(model.cfg.n_heads):
        table = qk_circuit(model, 0, h).dense() / math.sqrt(model.cfg.d_head)
        want = table[tokens[:, :, None], tokens[:, None, :]]  # [batch, dest, src]
        mask = torch.ones(10, 10, dtype=torch.bool).tril()
        torch.testing.assert_close(cache["scores.0"][:, h][:, mask], want[:, mask])
    bigram = random_model(0, "none", norm="rms", std=0.7)
    torch.testing.assert_close(bigram(tokens), direct_path(bigram).dense()[tokens])
    assert (token_embedding(bigram) - bigram.W_E).abs().max() > 0.1  # the scale matters


def test_top_bigrams_match_the_dense_centred_table(monkeypatch):
    """Chunked top-k of W_E W_U (rows centred) equals the dense table's top-k, chunk
    boundaries included; tokens are named current / out."""
    import qkov.circuits as circuits

    model = random_model(0, seed=3)
    E, U = model.W_E.detach().double(), model.W_U.detach().double()
    table = E @ U
    table = table - table.mean(1, keepdim=True)
    want_v, want_i = table.flatten().topk(12)
    monkeypatch.setattr(circuits, "CHUNK_ELEMENTS", 3 * model.cfg.d_vocab)  # 3 rows a chunk
    got = circuits.top_bigrams(model, k=12)
    assert [g["logit"] for g in got] == pytest.approx(want_v.tolist(), abs=1e-4)
    V = model.cfg.d_vocab
    assert [(g["current"], g["out"]) for g in got] == [
        (f"[{i // V}]", f"[{i % V}]") for i in want_i.tolist()
    ]


# ---------------------------------------------------------------------- general models
def test_token_circuits_of_a_general_model_are_the_folded_products():
    model = factories.general_model(2, normalization="layernorm").double()
    f = fold_layernorm(model, center_unembed=False)
    E = f.W_E.detach() / f.W_E.detach().pow(2).mean(-1, keepdim=True).add(1e-5).sqrt()
    l, h = 1, 2
    qk = (E @ f.W_Q[l, h] + f.b_Q[l, h]) @ (E @ f.W_K[l, h] + f.b_K[l, h]).T
    ov = (E @ f.W_V[l, h] + f.b_V[l, h]) @ f.W_O[l, h] @ f.W_U
    torch.testing.assert_close(qk_circuit(model, l, h).dense(), qk.detach())
    torch.testing.assert_close(ov_circuit(model, l, h).dense(), ov.detach())
    # Layer 0 of a 1-layer model reads exactly the normalised token + position: with
    # positions zeroed the QK circuit's entries are the model's attention scores.
    m0 = factories.general_model(1, normalization="layernorm", positional="none").double()
    tokens = factories.random_tokens(m0, batch=1)[0]
    _, cache = m0.run_with_cache(tokens)
    scores = cache["scores.0"][0, 0] * math.sqrt(m0.cfg.d_head)  # [dest, src]
    want = qk_circuit(m0, 0, 0).dense()[tokens][:, tokens]
    keep = torch.ones_like(scores, dtype=torch.bool).tril()
    torch.testing.assert_close(scores[keep], want[keep])


def test_effective_embedding_adds_mlp0_on_each_token():
    model = factories.general_model(2, normalization="layernorm").double()
    f = fold_layernorm(model, center_unembed=False)
    plain, eff = token_embedding(model), token_embedding(model, effective_embedding=True)
    x = f.W_E.detach() + f.b_O[0].detach()
    x = x / x.pow(2).mean(-1, keepdim=True).add(1e-5).sqrt()
    pre = x @ f.W_in[0] + f.b_in[0]
    raw = f.W_E.detach() + torch.nn.functional.gelu(pre) @ f.W_out[0] + f.b_out[0]
    want = raw / raw.pow(2).mean(-1, keepdim=True).add(1e-5).sqrt()
    torch.testing.assert_close(eff, want.detach())
    assert not torch.allclose(plain, eff)
    assert direct_path(model, effective_embedding=True).shape == (40, 40)


# ---------------------------------------------------------------------- positions
def test_positional_qk_of_a_planted_previous_token_head_is_off_diagonal():

    n = 10
    cfg = ModelConfig(n_layers=1, n_heads=1, d_model=n, d_head=n, n_ctx=n, d_vocab=5)
    W = {
        "W_E": torch.zeros(5, n),
        "W_pos": torch.eye(n),
        "W_Q": torch.eye(n).reshape(1, 1, n, n),
        "W_K": torch.diag(torch.ones(n - 1), 1).reshape(1, 1, n, n),  # k_s = e_{s+1}
        "W_V": torch.eye(n).reshape(1, 1, n, n),
        "W_O": torch.eye(n).reshape(1, 1, n, n),
        "W_U": torch.zeros(n, 5),
    }
    model = AttnOnlyTransformer.from_weights(cfg, W)
    pp = positional_qk(model, 0, 0, n_positions=6)
    assert pp.shape == (6, 6)
    expected = torch.diag(torch.ones(5), -1) / math.sqrt(n)  # destination d, source d - 1
    torch.testing.assert_close(pp, expected)


def test_a_heads_ov_circuit_over_the_final_scale_is_its_logit_effect():
    """The claim `final_norm_scale` (and the report's note) rests on: a layer-0 head's token
    OV circuit is what it writes before the final norm; divided by the final norm's scale
    at the destination it is the head's direct effect on the logits there."""
    # shortformer: the stream holds tokens alone, so the token circuit is exact
    cfg = ModelConfig(n_layers=1, n_heads=2, d_model=32, d_vocab=20, n_ctx=8, normalization="rms")
    torch.manual_seed(0)
    model = AttnOnlyTransformer(cfg)
    tokens = torch.randint(0, 20, (3, 8))
    logits, cache = model.run_with_cache(tokens)
    scale = cache["scale.final"]  # [batch, pos, 1]
    # the logits are the sum of every write to the stream over that scale, times W_U
    torch.testing.assert_close(logits, cache["resid_post.0"] / scale @ model.W_U)
    for head in range(2):
        ov = ov_circuit(model, 0, head)
        via_circuit = cache["pattern.0"][:, head] @ (ov.A @ ov.B)[tokens] / scale
        direct = cache["head_out.0"][:, head] @ model.W_U / scale
        torch.testing.assert_close(via_circuit, direct, atol=1e-5, rtol=1e-4)
    fs = final_norm_scale(model, tokens)
    q = torch.quantile(scale.flatten(), torch.tensor([0.5, 0.1, 0.9]))
    assert (fs.median, fs.p10, fs.p90) == pytest.approx(q.tolist())
    assert fs.n_positions == 3 * 8 and fs.p10 <= fs.median <= fs.p90


@pytest.mark.parametrize("n_layers", [0, 1])
def test_the_direct_path_times_the_tokens_rms_over_the_final_scale_is_its_logit(n_layers):
    """The claim `embedding_rms` (and the report's note on bigram tables) rests on: the
    table reads each token over its own RMS; the embedding's own term of the logits at a
    position is the table's row times that RMS over the final norm's scale there. With no
    layers (shortformer) the two divisors are the same and the table is the logits."""
    cfg = ModelConfig(
        n_layers=n_layers, n_heads=2, d_model=32, d_vocab=20, n_ctx=8, normalization="rms"
    )
    torch.manual_seed(1)
    model = AttnOnlyTransformer(cfg)
    tokens = torch.randint(0, 20, (3, 8))
    logits, cache = model.run_with_cache(tokens)
    scale = cache["scale.final"]  # [batch, pos, 1]
    table = direct_path(model).dense()  # [current, out]
    rms = rms_scale(model.W_E.detach(), cfg.norm_eps)  # [d_vocab, 1]
    embedding_term = model.W_E.detach()[tokens] @ model.W_U.detach() / scale
    torch.testing.assert_close(table[tokens] * rms[tokens] / scale, embedding_term)
    if n_layers == 0:
        torch.testing.assert_close(table[tokens], logits)
    else:  # the heads write into the stream too: the table alone is not the logits
        assert not torch.allclose(table[tokens], logits, atol=1e-3)
    es = embedding_rms(model)
    q = torch.quantile(rms.flatten(), torch.tensor([0.5, 0.1, 0.9]))
    assert (es["median"], es["p10"], es["p90"]) == pytest.approx(q.tolist())
    assert es["n_tokens"] == 20
    plain = AttnOnlyTransformer(ModelConfig(n_layers=1, n_heads=2, d_model=16, d_vocab=20))
    assert embedding_rms(plain) is None  # no norm: the table divides by nothing


def test_final_norm_scale_of_layernorm_and_of_no_norm():
    model = factories.general_model(1)  # layernorm: the divisor is ln_final_scale
    tokens = torch.randint(0, 40, (2, 12))
    _, cache = model.run_with_cache(tokens)
    fs = final_norm_scale(model, tokens)
    assert fs.median == pytest.approx(cache["ln_final_scale"].flatten().quantile(0.5).item())
    plain = AttnOnlyTransformer(ModelConfig(n_layers=1, n_heads=2, d_model=16, d_vocab=20))
    assert final_norm_scale(plain, tokens % 20) is None  # no final norm: already logits
