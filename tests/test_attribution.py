"""Per-token attribution: contributions sum to the next token's logit; a planted induction
head is the top path at a repeated token; `qkov attribute` prints it and refuses bad input."""

import json

import pytest
import torch

import factories
from qkov import attribute, shipped
from qkov.attribution import attribute_text
from qkov.cli import main
from qkov.errors import QkovError


@pytest.mark.parametrize("max_order", [None, 1])
@pytest.mark.parametrize("norm", ["none", "layernorm"])
def test_contributions_sum_to_next_token_logits(norm, max_order):
    model = factories.general_model(2, normalization=norm, init_std=0.3 if norm == "none" else 0.4)
    tokens = factories.random_tokens(model, batch=1)[0]
    att = attribute(model, tokens, max_order=max_order)
    n = len(tokens)
    with torch.no_grad():
        logits = model(tokens[None])[0]
    expected = logits[torch.arange(n - 1), tokens[1:]]
    torch.testing.assert_close(att.contributions.sum(-1), expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(att.logit, expected)
    assert att.contributions.shape == (n - 1, len(att.paths))
    assert (att.predicted == logits[:-1].argmax(-1)).all()
    assert {"direct", "L0H0", "L0H0>L1H1", "direct[mlp0]"} <= set(att.paths) or max_order == 1
    up, down = att.top(3, k=2)
    assert all(v > 0 for _, v in up) and all(v < 0 for _, v in down)
    assert len(att.lines()) == n  # a header and a line per predicted position
    json.dumps(att.to_dict())


@pytest.mark.parametrize("max_order", [None, 0, 1])
def test_each_contribution_is_its_path_terms_logit_of_the_next_token(max_order):
    """path_contributions reads only the targets' W_U columns; path by path, it equals the
    logit of the next token in path_expansion's term of the same name (biases, MLPs,
    layernorm and the remainder included)."""
    from qkov.paths import path_expansion

    model = factories.general_model(2, normalization="layernorm", init_std=0.4)
    tokens = factories.random_tokens(model, batch=1)[0]
    att = attribute(model, tokens, max_order=max_order)
    pe = path_expansion(model, tokens, max_order=max_order)
    assert att.paths == [t.name for t in pe.terms]
    assert att.orders == [t.order for t in pe.terms] == att.to_dict()["orders"]
    n = len(tokens) - 1
    want = torch.stack([t.logits[0, torch.arange(n), tokens[1:]] for t in pe.terms], -1)
    torch.testing.assert_close(att.contributions, want, atol=1e-5, rtol=1e-5)


def test_planted_induction_head_is_top_path_at_repeated_token():
    model = factories.induction_model()
    g = torch.Generator().manual_seed(3)
    first = torch.randperm(12, generator=g)[:6]
    tokens = torch.cat([first, first])
    att = attribute(model, tokens)
    # At positions 7..10 of the second copy, the next token is the one after the first
    # occurrence: the induction head L1H0 reading the token there is the top path.
    for i in range(7, 11):
        up, _ = att.top(i, k=1)
        assert up[0][0] == "L1H0", (i, up)
        assert up[0][1] > 0.5  # most of a one-hot copy (attention near 1)


def test_attribute_refuses_bad_input():
    model = factories.random_model(1)
    with pytest.raises(QkovError, match="at least 2 tokens"):
        attribute(model, torch.tensor([3]))
    with pytest.raises(QkovError, match="one sequence"):
        attribute(model, torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(QkovError, match="no tokenizer"):
        attribute_text(model, "hello")


def test_cli_attribute(tmp_path, capsys):
    text = tmp_path / "snippet.py"
    text.write_text("def f(x):\n    y = x\n    return y\n")
    out = tmp_path / "att.json"
    assert (
        main(["attribute", str(shipped("attn2")), "--text-file", str(text), "--json", str(out)])
        == 0
    )
    printed = capsys.readouterr().out
    header = printed.splitlines()[0]
    err = float(header.split("max |sum - logit| = ")[1].rstrip(")"))
    assert err <= 1e-4
    record = json.loads(out.read_text())
    assert len(record["contributions"]) == len(record["tokens"]) - 1
    assert "L1H0" in record["paths"] and "L0H1>L1H0" in record["paths"]
    long = tmp_path / "long.txt"
    long.write_text("x = 1\n" * 400)
    assert main(["attribute", str(shipped("attn2")), "--text-file", str(long)]) == 2
    assert "shorten it" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("  ")
    assert main(["attribute", str(shipped("attn2")), "--text-file", str(empty)]) == 2


def test_cli_attribute_reads_the_text_from_the_command_line_as_from_a_file(tmp_path, capsys):
    """`--text "..."` attributes the same text as `--text-file` holding it (the same rows
    and JSON); one of the two is required, never both, and a blank --text is one line."""
    code = "def f(x):\n    y = x\n    return y\n"
    (tmp_path / "t.py").write_text(code)
    folder = str(shipped("attn2"))
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert main(["attribute", folder, "--text-file", str(tmp_path / "t.py"), "--json", str(a)]) == 0
    from_file = capsys.readouterr().out.splitlines()
    assert main(["attribute", folder, "--text", code, "--json", str(b)]) == 0
    inline = capsys.readouterr().out.splitlines()
    assert json.loads(a.read_text()) == json.loads(b.read_text())
    assert inline[1:-1] == from_file[1:-1] and inline[0].startswith(f"{folder} on 'def f(x):")
    assert main(["attribute", folder, "--text", " \n"]) == 2
    assert capsys.readouterr().err.strip() == (
        "qkov attribute: error: --text is empty: give the text itself (or --text-file FILE)"
    )
    for args in ([], ["--text", code, "--text-file", str(tmp_path / "t.py")]):
        with pytest.raises(SystemExit) as e:
            main(["attribute", folder, *args])
        assert e.value.code == 2


def test_by_head_groups_are_exact_sums_of_the_paths():
    from factories import induction_model
    from qkov.attribution import attribute

    model = induction_model(noise=0.05)
    tokens = torch.tensor([1, 2, 3, 4, 1, 2, 3, 4])
    a = attribute(model, tokens)
    g = a.by_head()
    assert set(g.paths) == {"direct", "L0H0", "L0H1", "L1H0", "L1H1"}
    torch.testing.assert_close(g.contributions.sum(-1), a.contributions.sum(-1))
    # L1H0's group: its own path and every virtual head ending in it
    members = [i for i, n in enumerate(a.paths) if n.split(">")[-1] == "L1H0"]
    assert len(members) == 3  # L1H0, L0H0>L1H0, L0H1>L1H0
    torch.testing.assert_close(
        g.contributions[:, g.paths.index("L1H0")], a.contributions[:, members].sum(-1)
    )
    assert g.max_abs_error() < 1e-4


def test_cli_attribute_cuts_a_large_model_and_says_so(tmp_path, capsys, monkeypatch):
    text = tmp_path / "snippet.py"
    text.write_text("def f(x):\n    y = x\n    return y\n")
    monkeypatch.setattr("qkov.budget.PATH_BUDGET", 1)  # as if attn2 were GPT-2-sized
    assert main(["attribute", str(shipped("attn2")), "--text-file", str(text)]) == 0
    out = capsys.readouterr().out
    assert "paths through more than 0 heads summed into 'order>0' (the budget" in out
    assert "max |sum - logit| = " in out and "L1H" not in out
    assert (
        main(["attribute", str(shipped("attn2")), "--text-file", str(text), "--max-order", "1"])
        == 0
    )
    assert "the budget" not in capsys.readouterr().out


def test_predictions_are_never_padding_ids(tmp_path):
    """On a vocabulary padded past its tokenizer (Pythia: 50,304 ids, 50,277 tokens) the
    prediction shown at each position is the top logit among the tokenizer's ids: no text
    holds a padding id. The logits and contributions stay the model's own."""
    import qkov
    from hf_models import TEXT, hf_model, save_folder, tiny_tokenizer

    model = qkov.load(save_folder(hf_model("gpt2"), tmp_path / "gpt2", tiny_tokenizer()))
    n_known = model.tokenizer.get_vocab_size()
    assert n_known < model.cfg.d_vocab
    with torch.no_grad():
        model.b_U[n_known:] += 5.0  # the padding ids would top every position
    ids = torch.tensor(model.tokenizer.encode(TEXT).ids)
    a = attribute(model, ids, max_order=1)
    with torch.no_grad():
        logits = model(ids[None])[0, :-1]
    assert a.predicted.tolist() == logits[:, :n_known].argmax(-1).tolist()
    assert torch.allclose(a.logit, logits[torch.arange(len(ids) - 1), ids[1:]], atol=1e-4)
