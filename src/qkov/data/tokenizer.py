"""Byte-level BPE tokenizer trained on the corpus with HF `tokenizers`."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from qkov.errors import QkovError

EOT = "<|endoftext|>"


def no_tokenizer(name: str, what: str) -> str:
    """The one line for text work on a model without a tokenizer: `name` (the model, or its
    folder) has none, so `what` cannot be done, and how to mend it."""
    return (
        f"{name} has no tokenizer.json, so {what}: copy the model's own tokenizer.json into "
        "its folder (every run of `qkov train` has one)"
    )


def text_prefix(tokenizer: Tokenizer, text: str) -> tuple[list[int], list[int]]:
    """(the ids the tokenizer puts in front of `text`, the text's own ids): ([], all of
    them) for a tokenizer without such tokens, or one that also adds tokens after a text."""
    ids = tokenizer.encode(text).ids
    body = tokenizer.encode(text, add_special_tokens=False).ids
    k = len(ids) - len(body)
    if k > 0 and ids[k:] == body:
        return ids[:k], body
    return [], ids


def start_ids(tokenizer: Tokenizer | None) -> list[int]:
    """The ids a tokenizer puts in front of any text (Llama's beginning-of-text token, by
    its post-processor; [] for none, or no tokenizer). The random-token probes put them in
    front of every row, as a text would have them (TransformerLens prepends its BOS too)."""
    return [] if tokenizer is None else text_prefix(tokenizer, "a")[0]


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4096) -> Tokenizer:
    """Byte-level BPE with `vocab_size` tokens; id 0 is the document separator <|endoftext|>."""
    min_size = 256 + 1
    if vocab_size < min_size:
        raise QkovError(
            f"--vocab-size {vocab_size} is too small for byte-level BPE: use at least {min_size}"
        )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def decode_token(tok: Tokenizer | None, token_id: int) -> str:
    """One token id as readable text (its bytes decoded).

    A token that is part of a UTF-8 character shows its vocabulary entry; without a
    tokenizer, or for an id outside its vocabulary, the id in brackets: ``[17]``.
    """
    token_id = int(token_id)
    if tok is None or not 0 <= token_id < tok.get_vocab_size():
        return f"[{token_id}]"
    text = tok.decode([token_id], skip_special_tokens=False)
    if not text or "\ufffd" in text:
        return tok.id_to_token(token_id) or f"[{token_id}]"
    return text


def known_ids(d_vocab: int, tok: Tokenizer | None) -> torch.Tensor | None:
    """[d_vocab] bool: the ids the tokenizer has, where the model's vocabulary is padded past
    it (Pythia: 50,304 ids, 50,277 tokens): no text holds the others, so nothing samples,
    predicts or ranks them. None where the tokenizer covers every id, or there is none."""
    if tok is None or tok.get_vocab_size() >= d_vocab:
        return None
    return torch.arange(d_vocab) < tok.get_vocab_size()
