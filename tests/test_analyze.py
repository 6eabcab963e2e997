"""analyze: which evaluation set each model gets, and that it says so (qkov.analyze,
qkov.data.evaluation)."""

import json

import pytest

from qkov import QkovError
from qkov.analyze import analyze
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


def test_a_text_too_short_to_evaluate_is_refused():
    model = make_model(1)
    with pytest.raises(QkovError, match="at least 3"):
        text_windows(model.tokenizer, "w1 w2", model.cfg.n_ctx, "short.txt")
    with pytest.raises(QkovError, match="no tokenizer"):
        model.tokenizer = None
        evaluation_set(model, text="w1 w2 w3")
