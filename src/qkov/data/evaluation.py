"""The evaluation set: the one batch of tokens a model's loss, ICL score and term importance
are measured on, with the words that say what it is.

For a model trained on text it is the held-out documents of its own corpus (the split
`qkov train` never trained on): the first n_ctx tokens of each held-out document at least
that long, so every sequence starts at a document start and the ICL score's late window
reads the same document as its early one. Given text is cut into windows of n_ctx tokens.
A model without a tokenizer (a synthetic task) is evaluated on the seeded random-token
probe, and the set says so (kind "random_tokens"): its loss is not comparable with text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from qkov.data.corpus import HELDOUT, SYNTHETIC, load_corpus, text_sha256
from qkov.data.probes import induction_probe
from qkov.data.tokenizer import no_tokenizer, start_ids, text_prefix
from qkov.errors import QkovError
from qkov.reprs import tensor, wrap

DEFAULT_SEQUENCES = 256  # the stdlib split has ~70 documents of 256 tokens: all of them
MIN_TOKENS = 3  # the ICL score needs an early and a late token to predict


@dataclass(frozen=True)
class EvaluationSet:
    """tokens [n_sequences, seq_len]; kind "text" or "random_tokens"."""

    tokens: Tensor
    description: str
    kind: str

    @property
    def n_tokens(self) -> int:
        """Predicted tokens: every position but the first of each sequence."""
        return self.tokens.shape[0] * (self.tokens.shape[1] - 1)

    def __repr__(self) -> str:
        about = wrap(f"EvaluationSet({self.kind}: ", self.description.split(" "), ";", " ", "")
        return (
            f"{about}\n  tokens {tensor(self.tokens, ('sequence', 'pos'))}, "
            f"{self.n_tokens} predicted tokens)"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "description": self.description,
            "kind": self.kind,
            "n_sequences": self.tokens.shape[0],
            "seq_len": self.tokens.shape[1],
            "n_tokens": self.n_tokens,
        }


def heldout_documents(
    tokenizer: Any,
    corpus: str,
    n_ctx: int,
    max_sequences: int = DEFAULT_SEQUENCES,
    record: dict[str, Any] | None = None,
) -> EvaluationSet:
    """The first n_ctx tokens of each held-out document of `corpus` with at least n_ctx tokens
    (at most max_sequences, in the split's order), encoded with `tokenizer`. record: the
    run's heldout.json (`heldout_record`): the documents are found by their text, so they
    are the ones training held out wherever the corpus now lives; those no longer there
    unchanged are said. None (a run from before runs recorded it): split by name, as
    training did, which holds only where the corpus's files have the same paths."""
    try:
        documents = load_corpus(corpus)
    except QkovError as e:  # its mend names --corpus, a flag of qkov train, not of this command
        raise QkovError(
            f"the held-out documents of the run's corpus {corpus!r} (train_config.json) "
            f"cannot be read ({str(e).split(':')[0]}): run from the folder it was trained "
            "in, or evaluate on a text file (--text-file)"
        ) from None
    if record is None:
        _, val = documents.split()
        found = "split by file name: the run has no heldout.json"
    else:
        by_text = {}
        for d in documents.documents:
            by_text.setdefault(text_sha256(d.text), d)
        wanted = [r["sha256"] for r in record["documents"]]
        val = [by_text[h] for h in wanted if h in by_text]
        missing = len(wanted) - len(val)
        found = f"the {len(val)} of the {len(wanted)} held out in training found unchanged"
        if not val:
            raise QkovError(
                f"none of the {len(wanted)} documents the run held out (heldout.json) is in "
                f"--corpus {corpus} as it is now: evaluate on a text file (--text-file)"
            )
    rows = []
    for doc in val:
        ids = tokenizer.encode(doc.text).ids
        if len(ids) >= n_ctx:
            rows.append(ids[:n_ctx])
            if len(rows) == max_sequences:
                break
    if not rows:
        raise QkovError(
            f"no held-out document of --corpus {corpus} has n_ctx={n_ctx} tokens: "
            "evaluate on a text file instead (--text-file)"
        )
    said = "" if record is not None and not missing else f"; {found}"
    return EvaluationSet(
        torch.tensor(rows, dtype=torch.long),
        f"held-out documents of --corpus {corpus} (the first {n_ctx} tokens of each{said})",
        "text",
    )


def text_windows(
    tokenizer: Any, text: str, n_ctx: int, name: str, max_sequences: int = DEFAULT_SEQUENCES
) -> EvaluationSet:
    """Consecutive windows of min(n_ctx, length) tokens of `text` (named `name`). A
    tokenizer that puts tokens in front of every text (Llama's beginning-of-text token, by
    its post-processor) puts them in front of every window, as the model reads any text:
    a later window would otherwise start mid-text without them, which such a model never
    saw in training (`text_prefix`)."""
    prefix, body = text_prefix(tokenizer, text)
    ids = prefix + body
    if len(ids) < MIN_TOKENS:
        raise QkovError(
            f"{name} encodes to {len(ids)} tokens: evaluation needs at least {MIN_TOKENS}; "
            "pass a longer text"
        )
    n = min(n_ctx, len(ids))
    step = n - len(prefix)
    rows = [prefix + body[i : i + step] for i in range(0, len(body) - step + 1, step)]
    rows = rows[:max_sequences]
    what = f"{len(rows)} window{'s' * (len(rows) != 1)} of {n} tokens"
    if prefix:
        shown = ", ".join(str(tokenizer.id_to_token(i)) for i in prefix)
        what += f", each starting with {shown}"
    return EvaluationSet(torch.tensor(rows, dtype=torch.long), f"{name} ({what})", "text")


def random_tokens(
    d_vocab: int,
    n_ctx: int,
    n_sequences: int = 16,
    seed: int = 0,
    prefix: list[int] | tuple[int, ...] = (),
) -> EvaluationSet:
    """The seeded repeated-random-token probe (`induction_probe`) as an evaluation set, each
    row after `prefix` (what the model's tokenizer puts in front of any text: `start_ids`)."""
    seq_len = min(n_ctx, 128)
    probe = induction_probe(d_vocab, n_sequences, seq_len, seed, prefix=list(prefix))
    return EvaluationSet(
        probe.tokens,
        f"random tokens ending in a repeated block (the induction probe, seed {seed})",
        "random_tokens",
    )


def heldout_of(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's heldout.json (`qkov.data.corpus.heldout_record`), or None where the run has
    none (it is from before runs wrote it). One that cannot be read is refused."""
    path = Path(run_dir) / HELDOUT
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if all(isinstance(r["sha256"], str) for r in record["documents"]):
            return record
    except (OSError, ValueError, KeyError, TypeError):
        pass
    raise QkovError(
        f"{path} is not a list of held-out documents as qkov train writes it: restore it, or "
        "delete it to split the corpus by file name"
    )


def training_corpus(run_dir: str | Path) -> str | None:
    """The text corpus a run was trained on (its train_config.json), or None: no record,
    or a synthetic task."""
    from qkov.checkpoint import read_train_config

    corpus = (read_train_config(run_dir) or {}).get("corpus")
    return corpus if isinstance(corpus, str) and corpus not in SYNTHETIC else None


def evaluation_set(
    model: Any,
    run_dir: str | Path | None = None,
    *,
    text: str | None = None,
    text_name: str = "the given text",
    max_sequences: int = DEFAULT_SEQUENCES,
    seed: int = 0,
) -> EvaluationSet:
    """The evaluation set of a model: `text` if given; else the held-out documents of the
    corpus named in run_dir/train_config.json; else the random-token probe."""
    cfg, tok = model.cfg, model.tokenizer
    if text is not None:
        if tok is None:
            raise QkovError(no_tokenizer("the model", "a text cannot be encoded"))
        return text_windows(tok, text, cfg.n_ctx, text_name, max_sequences)
    corpus = training_corpus(run_dir) if run_dir is not None else None
    if corpus is not None and tok is not None:
        return heldout_documents(tok, corpus, cfg.n_ctx, max_sequences, heldout_of(run_dir))
    return random_tokens(cfg.d_vocab, cfg.n_ctx, min(max_sequences, 16), seed, start_ids(tok))
