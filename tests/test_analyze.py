"""analyze: which evaluation set each model gets, and that it says so (qkov.analyze,
qkov.data.evaluation)."""

import dataclasses
import json
import math

import pytest

from factories import add_start_token, general_model
from qkov import AttnOnlyTransformer, QkovError
from qkov.ablation import term_importance
from qkov.analyze import analyze
from qkov.circuits import embedding_rms
from qkov.data.evaluation import evaluation_set, text_windows
from test_report import SAMPLE, make_model


def test_text_model_is_evaluated_on_its_corpus_and_a_probe_model_on_the_probe(
    tiny_corpus, tmp_path
):
    """A model whose train_config names a text corpus is evaluated on that corpus's held-out
    documents; one trained on a synthetic task (or with no record) on the random-token
    probe. Side by side, analyze says the losses are not comparable."""
    text_dir, probe_dir = tmp_path / "text", tmp_path / "probe"
    model = make_model(1, text_dir)
    make_model(1, probe_dir, seed=1)
    (text_dir / "train_config.json").write_text(json.dumps({"corpus": str(tiny_corpus)}))
    (probe_dir / "train_config.json").write_text(json.dumps({"corpus": "induction-task"}))
    ev = evaluation_set(model, text_dir)
    assert ev.kind == "text" and "held-out documents" in ev.description
    assert ev.tokens.shape[1] == model.cfg.n_ctx  # each sequence: a document's first n_ctx
    assert evaluation_set(model, probe_dir).kind == "random_tokens"
    assert evaluation_set(model, None).kind == "random_tokens"
    notes = []
    analysis = analyze([str(text_dir), str(probe_dir)], log=notes.append)
    kinds = [m["evaluation"]["kind"] for m in analysis["models"]]
    assert kinds == ["text", "random_tokens"]
    assert any("not comparable" in n for n in notes), notes
    for m in analysis["models"]:
        ev = m["evaluation"]
        assert m["loss"]["n_tokens"] == ev["n_tokens"] == ev["n_sequences"] * (ev["seq_len"] - 1)
        assert m["icl"]["n_sequences"] == ev["n_sequences"]


def test_given_text_is_the_evaluation_set_of_every_model(tmp_path):
    notes = []
    a = make_model(2)
    b = make_model(0)
    analysis = analyze([a, b], text=SAMPLE, text_name="sample.txt", log=notes.append)
    evs = [m["evaluation"] for m in analysis["models"]]
    assert evs[0] == evs[1] and evs[0]["description"].startswith("sample.txt")
    assert not any("not comparable" in n for n in notes)
    assert [m["name"] for m in analysis["models"]] == ["2L", "0L"]
    # Progress: each model's stages, in order, each with the seconds since its start.
    stages = [n for n in notes if n.startswith("  [")]
    assert [n.split("] ", 1)[1] for n in stages if "done" in n] == ["2L: done", "0L: done"]
    two = [n.split("] 2L: ", 1)[1] for n in stages if "] 2L: " in n]
    assert two[0].startswith("loss on") and two[1].startswith("head scores") and len(two) >= 6
    seconds = [float(n[3 : n.index("s]")]) for n in stages if "] 2L: " in n]
    assert seconds == sorted(seconds)


def test_a_text_too_short_to_evaluate_is_refused():
    model = make_model(1)
    with pytest.raises(QkovError, match="at least 3"):
        text_windows(model.tokenizer, "w1 w2", model.cfg.n_ctx, "short.txt")
    with pytest.raises(QkovError, match="no tokenizer"):
        model.tokenizer = None
        evaluation_set(model, text="w1 w2 w3")


def test_text_windows_each_start_as_the_tokenizer_starts_a_text():
    """A tokenizer that puts a beginning-of-text token in front of every text (Llama's, by
    its post-processor) gets it in front of every evaluation window, each followed by the
    next stretch of the text; without one, the windows are the text's consecutive ids."""

    from qkov.data.tokenizer import text_prefix

    tok = make_model(1).tokenizer
    text = " ".join(f"w{i % 7}" for i in range(200))
    plain = text_windows(tok, text, 16, "t.txt")
    ids = tok.encode(text).ids
    assert plain.tokens.flatten().tolist() == ids[: plain.tokens.numel()]
    assert text_prefix(tok, text) == ([], ids)
    bos = add_start_token(tok, "<bos>")
    ev = text_windows(tok, text, 16, "t.txt")
    assert (ev.tokens[:, 0] == bos).all() and ev.tokens.shape[1] == 16
    assert ev.tokens[:, 1:].flatten().tolist() == ids[: ev.tokens.shape[0] * 15]
    assert "each starting with <bos>" in ev.description
    one = text_windows(tok, " ".join(f"w{i % 7}" for i in range(10)), 16, "short.txt")
    assert one.description.startswith("short.txt (1 window of 11 tokens, each starting")


def test_general_model_gets_every_analysis_with_its_mlp_terms():
    """A model with MLPs, biases and layernorm gets everything an attention-only model gets
    (heads, composition, induction circuits, trigrams, attention, term importance), and its
    term importance holds each MLP's knock-out as a term of kind "mlp" (order 0), after its
    layer's heads, equal to ablation.term_importance's own number; order 0 names its
    sources."""
    model = general_model(2, d_vocab=40, n_ctx=12)
    analysis = analyze(model, log=None)
    m = analysis["models"][0]
    assert m["config"]["d_mlp"] == 32 and m["config"]["bias"] is True
    assert len(m["heads"]) == 6 and m["composition"] and m["attention"]["patterns"]
    assert all(h["skip_trigrams"] and h["qk_eigenvalues"] for h in m["heads"])
    assert all(math.isfinite(v) for h in m["heads"] for v in h["scores"].values())
    assert set(m["not_computed"]) == {"training", "token_filter"}  # no run directory
    # its final layernorm's divisor on the evaluation set, what its circuits are divided by
    ev_tokens = evaluation_set(model, None).tokens[:16]
    _, cache = model.run_with_cache(ev_tokens)
    assert m["final_scale"]["median"] == pytest.approx(
        cache["ln_final_scale"].flatten().quantile(0.5).item()
    )
    # and, with layers, the RMS of W_E's rows the bigram table divides by (not the logits)
    assert m["embedding_rms"] == pytest.approx(embedding_rms(model))
    terms = m["term_importance"]["terms"]
    assert [t["term"] for t in terms] == [
        "order 0: direct path, biases, MLPs",
        "order 1: single heads (6)",
        "order 2: virtual heads (9)",
        *[f"L0H{h} knocked out" for h in range(3)],
        "MLP0 knocked out",
        *[f"L1H{h} knocked out" for h in range(3)],
        "MLP1 knocked out",
    ]
    mlp = [t for t in terms if t["kind"] == "mlp"]
    assert [t["order"] for t in mlp] == [0, 0]
    tokens = evaluation_set(model, None).tokens
    want = term_importance(model, tokens).mlps
    assert [t["loss_increase"] for t in mlp] == pytest.approx([x.zero_delta for x in want])
    assert all(math.isfinite(t["loss_increase"]) for t in terms)
    attn_only_model = analyze(make_model(2), log=None)["models"][0]
    assert "final_scale" not in attn_only_model  # no final norm: its circuits are logits
    assert "embedding_rms" not in attn_only_model
    attn_only = attn_only_model["term_importance"]["terms"]
    assert attn_only[0]["term"] == "order 0: direct path (1)"  # as before
    assert not [t for t in attn_only if t["kind"] == "mlp"]


def test_a_0_layer_rms_models_bigram_table_is_its_logits_and_needs_no_rms():
    """Shortformer, no layers: the final norm divides each position by its token's own RMS,
    the table's own divisor, so analyze records the final scale but no embedding RMS (the
    report adds no note: the table is the logits); with a layer it records both."""
    for n_layers in (0, 1):
        words = make_model(n_layers)  # its hostile word-level tokenizer
        model = AttnOnlyTransformer(dataclasses.replace(words.cfg, normalization="rms"))
        model.tokenizer = words.tokenizer
        m = analyze(model, log=None)["models"][0]
        assert "final_scale" in m
        assert ("embedding_rms" in m) == (n_layers > 0)


def test_positional_qk_keeps_small_values():
    """The W_pos W_QK W_pos^T maps are stored to significant digits: a model whose positions
    are small still gets its map (a fixed 3 decimals wrote it as zeros)."""
    import torch

    from qkov.circuits import positional_qk

    model = make_model(1)
    with torch.no_grad():
        model.W_pos.mul_(0.02)  # every score under 0.0005: 3 decimals would round it to 0
    want = positional_qk(model, 0, 1, 16)
    assert want.abs().max() < 5e-4 and want.abs().min() > 0
    got = analyze(model, text=SAMPLE, log=None)["models"][0]["positional_qk"][1]
    assert got["head"] == [0, 1]
    torch.testing.assert_close(torch.tensor(got["scores"]), want, rtol=1e-3, atol=0)


def test_head_scores_say_what_they_rest_on_and_match_it():
    """The head table's text scores rest on the first ABLATION_SEQUENCES sequences of the
    evaluation set, `qkov heads`' on all of them: analysis.json records which (and the
    probe's size and seed), the numbers are head_scores on exactly those tokens, and the
    report says so beside the table."""
    import torch

    from qkov.analyze import ABLATION_SEQUENCES
    from qkov.classification import classify_heads
    from qkov.data.evaluation import EvaluationSet
    from qkov.heads import head_scores
    from qkov.report import render_report

    model = make_model(2)
    g = torch.Generator().manual_seed(0)
    n_seqs = ABLATION_SEQUENCES + 4
    tokens = torch.randint(0, model.cfg.d_vocab, (n_seqs, 24), generator=g)
    ev = EvaluationSet(tokens, "twenty random rows", "text")
    analysis = analyze([model], evaluation=ev, seed=3, log=None)
    m = analysis["models"][0]
    on = m["head_scores_measured_on"]
    assert on["text"] == {"n_sequences": ABLATION_SEQUENCES, "seq_len": 24, "of_sequences": n_seqs}
    want = head_scores(model, tokens[: on["text"]["n_sequences"]])
    probe = on["probe"]
    cls = classify_heads(model, batch=probe["n_sequences"], seq_len=probe["seq_len"], seed=3)
    assert probe["seed"] == 3
    for h in m["heads"]:
        for k, v in h["text_scores"].items():
            w = float(getattr(want, k)[h["layer"], h["head"]])
            assert (v is None and math.isnan(w)) or v == pytest.approx(w, abs=1e-6), k
        for k, v in h["scores"].items():
            w = cls.record(h["layer"], h["head"]).scores[k]
            assert (v is None and math.isnan(w)) or v == pytest.approx(w, abs=1e-6), k
    html = render_report(analysis)
    assert f"the first {ABLATION_SEQUENCES} of its {n_seqs} sequences" in html
    assert f"{probe['n_sequences']} sequences of {probe['seq_len']} random tokens" in html
    assert "(seed 3)" in html
