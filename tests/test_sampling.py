"""qkov.sampling: argument checks at the door, streaming equals collecting, the context cut,
text decoded across multi-byte tokens, and token healing of a prompt's last token."""

from __future__ import annotations

import math

import pytest
import torch

from qkov import ModelConfig, QkovError, load, shipped
from qkov.model import AttnOnlyTransformer
from qkov.sampling import (
    decode_stream,
    generate,
    generate_stream,
    heal_prompt,
    sample_text,
)


@pytest.fixture(scope="module")
def tiny() -> AttnOnlyTransformer:
    """A random 1-layer model with a short context (n_ctx=4), no tokenizer."""
    cfg = ModelConfig(n_layers=1, n_heads=2, d_model=8, n_ctx=4, d_vocab=11, init_std=0.5)
    return AttnOnlyTransformer(cfg).eval()


@pytest.fixture(scope="module")
def attn2() -> AttnOnlyTransformer:
    return load(shipped("attn2"))


@pytest.mark.parametrize(
    "change, words",
    [
        ({"n_tokens": 0}, "(--tokens) must be positive, got 0"),
        ({"n_tokens": -3}, "(--tokens) must be positive, got -3"),
        ({"n_tokens": True}, "(--tokens) must be positive"),
        ({"n_tokens": 2.0}, "(--tokens) must be positive"),
        ({"temperature": -1.0}, "--temperature must be a finite number >= 0 (0: greedy), got -1"),
        ({"temperature": math.nan}, "--temperature must be a finite number >= 0"),
        ({"temperature": math.inf}, "--temperature must be a finite number >= 0"),
        ({"temperature": "0.8"}, "--temperature must be a finite number >= 0"),
        ({"seed": -1}, "--seed must be an integer in [0, 2**63), got -1"),
        ({"seed": 2**63}, "--seed must be an integer in [0, 2**63)"),
        ({"seed": 1.5}, "--seed must be an integer in [0, 2**63)"),
        ({"prompt": torch.tensor([], dtype=torch.long)}, "the prompt is empty"),
        ({"prompt": torch.tensor([[1, 2]])}, "must be token ids [pos], got shape [1, 2]"),
        ({"prompt": torch.tensor([1.0, 2.0])}, "integer token ids"),
        ({"prompt": [1, 2]}, "integer token ids"),
        ({"prompt": torch.tensor([1, 11])}, "prompt token id 11 is out of range [0, 11)"),
        ({"prompt": torch.tensor([-1, 2])}, "prompt token id -1 is out of range [0, 11)"),
        # out of range where the context cut would have hidden it from the model
        ({"prompt": torch.tensor([99, 1, 2, 3, 4, 5])}, "prompt token id 99 is out of range"),
    ],
)
def test_bad_arguments_are_refused_before_any_token(tiny, change, words):
    args = {"prompt": torch.tensor([1, 2]), "n_tokens": 3, "temperature": 0.8, "seed": 0}
    args.update(change)
    with pytest.raises(QkovError) as e:
        generate_stream(tiny, **args)  # no next(): the checks run at the call
    assert words in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(QkovError):
        generate(tiny, **args)


def test_temperature_zero_is_greedy_and_any_seed_in_range_works(tiny):
    prompt = torch.tensor([3, 1, 4])
    out = generate(tiny, prompt, 6, temperature=0)
    seq = prompt
    for _ in range(6):  # greedy by hand, with the same context cut
        nxt = tiny(seq[-tiny.cfg.n_ctx :][None])[0, -1].argmax()
        seq = torch.cat([seq, nxt.view(1)])
    assert torch.equal(out, seq)
    for seed in (0, 2**63 - 1):
        assert len(generate(tiny, prompt, 2, 1.0, seed)) == 5


def test_stream_equals_generate_and_runs_past_n_ctx(tiny):
    prompt = torch.tensor([1, 2, 3, 4, 5, 6, 7])  # longer than n_ctx=4: cut, not refused
    streamed = list(generate_stream(tiny, prompt, 12, 1.0, seed=5))
    out = generate(tiny, prompt, 12, 1.0, seed=5)
    assert out[:7].tolist() == prompt.tolist() and out[7:].tolist() == streamed
    assert all(isinstance(t, int) and 0 <= t < 11 for t in streamed)
    assert streamed != list(generate_stream(tiny, prompt, 12, 1.0, seed=6))  # the seed matters


def test_the_context_is_the_last_n_ctx_tokens(tiny):
    """Only the last n_ctx tokens of the prompt reach the model."""
    a = generate(tiny, torch.tensor([9, 9, 9, 1, 2, 3, 4]), 5, 0.7, seed=1)
    b = generate(tiny, torch.tensor([0, 1, 2, 3, 4]), 5, 0.7, seed=1)
    assert a[-5:].tolist() == b[-5:].tolist()


@pytest.mark.parametrize(
    "text",
    ["def f(x):\n    return x\n", "héllo wörld — naïve café", "emoji 🙂🐍 and 中文 text", "é"],
)
def test_decode_stream_splits_multibyte_characters_correctly(attn2, text):
    """Fed token by token, the pieces join to the full decode and never show a U+FFFD for
    a character whose bytes span several tokens."""
    tok = attn2.tokenizer
    ids = tok.encode(text).ids
    assert tok.decode(ids) == text
    for cut in range(1, len(ids)):
        pieces = list(decode_stream(tok, ids[:cut], ids[cut:]))
        assert "".join(pieces) == text, cut
        assert not any("\ufffd" in p for p in pieces), (cut, pieces)
    if any(ord(c) > 127 for c in text):  # some character did span tokens
        assert any("\ufffd" in tok.decode([i]) for i in ids)


def test_decode_stream_shows_invalid_utf8_at_the_end(attn2):
    tok = attn2.tokenizer
    lone = next(i for i in range(tok.get_vocab_size()) if tok.decode([i]) == "\ufffd")
    pieces = list(decode_stream(tok, tok.encode("x").ids, [lone, lone]))
    assert "".join(pieces) == tok.decode([*tok.encode("x").ids, lone, lone])


def test_heal_prompt_rechooses_a_trailing_space(attn2):
    tok = attn2.tokenizer
    ids = tok.encode("def ").ids
    assert [tok.id_to_token(i) for i in ids] == ["def", "Ġ"]  # the space is its own token
    healed, allowed = heal_prompt(tok, ids)
    assert healed == ids[:1]
    ok = allowed.nonzero().flatten().tolist()
    assert ids[1] in ok and len(ok) > 100
    assert all(tok.id_to_token(i).startswith("Ġ") for i in ok)
    assert heal_prompt(tok, ids[:1]) == (ids[:1], None)  # one token: nothing to heal


def test_sample_def_space_continues_with_a_word(attn2):
    """README's `qkov sample attn2 --prompt "def "` gave `def &&&&&...`: after the lone
    space token the model's top guesses are word pieces (`ter`, `quo`, `&`), seed 0 drew
    `&` (p=0.06) and the copying heads repeated it. Healed, it draws ` name`."""
    for seed in range(4):
        text = "".join(sample_text(attn2, "def ", 8, 0.8, seed))
        assert text.startswith("def ") and (text[4].isalpha() or text[4] == "_"), (seed, text)
        assert "&&" not in text, (seed, text)
    raw = "".join(sample_text(attn2, "def ", 8, 0.8, 0, heal=False))
    assert raw.startswith("def ")  # --no-heal samples after the lone space token as given


def test_sample_text_refusals(attn2, tiny):
    with pytest.raises(QkovError, match="has no tokenizer.json"):
        sample_text(tiny, "x", 3)
    with pytest.raises(QkovError, match="not valid UTF-8"):
        sample_text(attn2, "def \udcff", 3)
    with pytest.raises(QkovError, match="encodes to no tokens"):
        sample_text(attn2, "", 3)
    with pytest.raises(QkovError, match="--temperature must be a finite number >= 0"):
        sample_text(attn2, "def ", 3, temperature=-1)


def test_a_vocabulary_padded_past_the_tokenizer_samples_only_known_ids():
    """A model whose d_vocab is padded past its tokenizer (HF models often are): ids the
    tokenizer lacks would decode to nothing, so they are never sampled; healing still works."""
    from qkov.data.tokenizer import train_tokenizer

    tok = train_tokenizer(["the quick brown fox jumps over the lazy dog\n"] * 20, 270)
    n_known = tok.get_vocab_size()
    cfg = ModelConfig(n_layers=1, n_heads=2, d_model=8, n_ctx=8, d_vocab=n_known + 30)
    model = AttnOnlyTransformer(cfg).eval()
    with torch.no_grad():
        model.W_U[:, n_known:] += 50.0  # the padding ids would win every draw
    model.tokenizer = tok
    text = "".join(sample_text(model, "the ", 40, temperature=2.0, seed=1))  # healed
    assert text.startswith("the") and len(text) >= 40  # 40 tokens of at least a byte each
    allowed = torch.arange(cfg.d_vocab) < n_known
    new = list(generate_stream(model, torch.tensor([1, 2]), 50, 2.0, 0, allowed=allowed))
    assert max(new) < n_known
