"""Autoregressive sampling from an AttnOnlyTransformer: token ids (`generate_stream`,
`generate`) and text (`sample_text`, which heals the prompt's last token and decodes the
continuation as it grows).

Every argument is checked here, before the first token, so a notebook gets the same
one-line QkovError as `qkov sample`."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from qkov.data.tokenizer import known_ids, no_tokenizer
from qkov.errors import QkovError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from qkov.model import AttnOnlyTransformer

MAX_SEED = 2**63  # torch.Generator.manual_seed takes a signed 64-bit seed
# A decoded window may end in U+FFFD while a multi-byte character waits for its next byte;
# past this many held tokens the U+FFFD is the model's own invalid UTF-8, shown as such.
MAX_HELD_TOKENS = 16


def check_sampling_args(
    model: AttnOnlyTransformer, prompt: Tensor, n_tokens: int, temperature: float, seed: int
) -> Tensor:
    """Refuse bad sampling arguments with a QkovError naming the flag; the prompt as
    int64 ids [pos] on the CPU."""
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens < 1:
        raise QkovError(
            f"the number of tokens to generate (--tokens) must be positive, got {n_tokens}"
        )
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float))
        or not math.isfinite(temperature)
        or temperature < 0
    ):
        raise QkovError(
            f"--temperature must be a finite number >= 0 (0: greedy), got {temperature}"
        )
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < MAX_SEED:
        raise QkovError(f"--seed must be an integer in [0, 2**63), got {seed}")
    if not isinstance(prompt, Tensor) or prompt.is_floating_point() or prompt.is_complex():
        raise QkovError("the prompt must be a tensor of integer token ids [pos]")
    if prompt.ndim != 1:
        raise QkovError(f"the prompt must be token ids [pos], got shape {list(prompt.shape)}")
    if prompt.numel() == 0:
        raise QkovError("the prompt is empty: give at least one token (--prompt TEXT)")
    d_vocab = model.cfg.d_vocab
    lo, hi = int(prompt.min()), int(prompt.max())
    if lo < 0 or hi >= d_vocab:
        raise QkovError(
            f"prompt token id {hi if hi >= d_vocab else lo} is out of range [0, {d_vocab}): "
            "was it encoded with this model's tokenizer?"
        )
    return prompt.long().cpu()


def generate_stream(
    model: AttnOnlyTransformer,
    prompt: Tensor,
    n_tokens: int,
    temperature: float = 0.8,
    seed: int = 0,
    first_allowed: Tensor | None = None,
    allowed: Tensor | None = None,
) -> Iterator[int]:
    """Yield `n_tokens` token ids continuing `prompt` [pos], one at a time; the context is
    cut to the last n_ctx tokens. temperature 0 is greedy. `first_allowed` [d_vocab] (bool)
    restricts the first token (token healing, see `heal_prompt`), `allowed` every token (a
    tokenizer smaller than the model's padded vocabulary).

    The arguments are checked now, not at the first `next()`."""
    seq = check_sampling_args(model, prompt, n_tokens, temperature, seed)
    for name, mask in (("first_allowed", first_allowed), ("allowed", allowed)):
        if mask is not None and mask.shape != (model.cfg.d_vocab,):
            raise QkovError(
                f"{name} must be a mask [d_vocab={model.cfg.d_vocab}], got shape {list(mask.shape)}"
            )
    if first_allowed is not None and allowed is not None:
        first_allowed = first_allowed.bool() & allowed.bool()
    return _stream(model, seq, n_tokens, float(temperature), seed, first_allowed, allowed)


@torch.no_grad()
def _stream(
    model: AttnOnlyTransformer,
    seq: Tensor,
    n_tokens: int,
    temperature: float,
    seed: int,
    first_allowed: Tensor | None,
    allowed: Tensor | None = None,
) -> Iterator[int]:
    g = torch.Generator().manual_seed(seed)
    n_ctx = model.cfg.n_ctx
    for i in range(n_tokens):
        logits = model(seq[-n_ctx:][None])[0, -1].float().cpu()  # [d_vocab]
        if not torch.isfinite(logits).all():
            raise QkovError(
                "the model's logits are not finite: its weights hold NaN or inf "
                "(a diverged or corrupt checkpoint); use an earlier checkpoint"
            )
        if i == 0 and first_allowed is not None:
            logits = logits.masked_fill(~first_allowed.bool().cpu(), -math.inf)
        elif allowed is not None:
            logits = logits.masked_fill(~allowed.bool().cpu(), -math.inf)
        if temperature == 0:
            nxt = logits.argmax()
        else:
            # Shift by the max, in float64: logits / 1e-30 would overflow to inf - inf = nan.
            probs = ((logits.double() - logits.max()) / temperature).softmax(-1)
            nxt = torch.multinomial(probs, 1, generator=g)[0]
        seq = torch.cat([seq[-n_ctx:], nxt.view(1)])  # keep only what the next step reads
        yield int(nxt)


def generate(
    model: AttnOnlyTransformer,
    prompt: Tensor,
    n_tokens: int,
    temperature: float = 0.8,
    seed: int = 0,
) -> Tensor:
    """prompt [pos] -> [pos + n_tokens]: the prompt and its continuation (`generate_stream`)."""
    new = list(generate_stream(model, prompt, n_tokens, temperature, seed))
    return torch.cat([prompt.long().cpu(), torch.tensor(new, dtype=torch.long)])


def heal_prompt(tokenizer: Tokenizer, ids: list[int]) -> tuple[list[int], Tensor | None]:
    """Token healing: drop the prompt's last token and allow as the first new token only
    those whose bytes start with the dropped token's bytes; (ids, first_allowed [d_vocab]).

    Why: BPE merges a trailing space into the next word ("def foo" is `def`,` foo`), so a
    prompt "def " ends in a lone ` ` token the model rarely saw in training; what follows it
    is out of distribution. Healed, the model picks ` foo` itself. A one-token prompt, or a
    last token that starts no other token, is left as it is (None)."""
    if len(ids) < 2:
        return ids, None
    vocab = [tokenizer.id_to_token(i) or "" for i in range(tokenizer.get_vocab_size())]
    # Byte-level BPE vocabulary entries spell bytes one character each ("Ġ" is the space
    # byte), so a prefix of the entry is a prefix of the bytes.
    last = vocab[ids[-1]]
    allowed = torch.tensor([bool(last) and v.startswith(last) for v in vocab])
    if int(allowed.sum()) <= 1:
        return ids, None
    return ids[:-1], allowed


def decode_stream(tokenizer: Tokenizer, prompt: list[int], new: Iterable[int]) -> Iterator[str]:
    """The text of prompt + new as it grows: the decoded prompt, then for each new token
    the difference between the decoded sequence and the text already yielded, so
    "".join(...) == tokenizer.decode(prompt + new).

    A token that ends inside a multi-byte character decodes to U+FFFD until a later token
    completes it: text is held back while it ends in U+FFFD (a healed prompt may end so
    too). Each step decodes a short window (from the previous yield's boundary), not the
    whole sequence, so a long stream costs linear time."""
    ids: list[int] = []
    start = done = 0  # ids[start:done] decodes to the end of the text already yielded
    held = 0  # arrivals (the prompt, then one token each) since text was last yielded
    for arrived in itertools.chain([list(prompt)], ([t] for t in new)):
        ids += arrived
        held += 1
        shown = tokenizer.decode(ids[start:done])
        text = tokenizer.decode(ids[start:])
        if len(text) > len(shown) and (not text.endswith("\ufffd") or held >= MAX_HELD_TOKENS):
            yield text[len(shown) :]
            # The next window starts at the previous boundary, not this one, so a decoder
            # that treats a sequence's first token specially sees the same context twice.
            start, done, held = done, len(ids), 0
    if done < len(ids):  # the end: invalid UTF-8 the model wrote is shown as U+FFFD
        yield tokenizer.decode(ids[start:])[len(tokenizer.decode(ids[start:done])) :]


def sample_text(
    model: AttnOnlyTransformer,
    prompt: str,
    n_tokens: int,
    temperature: float = 0.8,
    seed: int = 0,
    heal: bool = True,
) -> Iterator[str]:
    """Continue the text `prompt` by `n_tokens` tokens; yield the text as it grows (the
    prompt first). Needs `model.tokenizer`. With `heal`, the prompt's last token is
    re-chosen by the model (`heal_prompt`). Arguments are checked before the first yield."""
    tok = model.tokenizer
    if tok is None:
        raise QkovError(no_tokenizer("the model", "a text prompt cannot be encoded"))
    if not isinstance(prompt, str):
        raise QkovError(f"the prompt must be text, got {type(prompt).__name__}")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:  # bytes that are not UTF-8 reach argv as lone surrogates
        raise QkovError("--prompt is not valid UTF-8 text: pass UTF-8") from None
    ids = tok.encode(prompt).ids
    if not ids:
        raise QkovError("--prompt encodes to no tokens: give some text")
    first_allowed = None
    if heal:
        ids, first_allowed = heal_prompt(tok, ids)
    # A model's vocabulary may be padded past its tokenizer's (a multiple of 64, say): an id
    # the tokenizer lacks would decode to nothing, so it is never sampled.
    allowed = known_ids(model.cfg.d_vocab, tok)
    if first_allowed is not None and allowed is not None:  # heal_prompt's mask is n_known long
        padding = torch.zeros(model.cfg.d_vocab - first_allowed.numel(), dtype=torch.bool)
        first_allowed = torch.cat([first_allowed, padding])
    new = generate_stream(
        model, torch.tensor(ids), n_tokens, temperature, seed, first_allowed, allowed
    )
    return decode_stream(tok, ids, new)
