"""Jupyter views of the records a notebook user holds: each `*_html` function returns one
self-contained, offline HTML fragment (scoped style, data, the report's hover script) with
every token and name escaped, and the records' `_repr_html_` methods call them.

    head_classification_html(classify_heads(model))   the head table: labels and scores
    path_expansion_html(path_expansion(model, toks))  the terms, largest first, and their sum
    skip_trigrams_html(skip_trigrams(model, l, h))    source ... destination -> out
    attention(model, text)                            AttentionPatterns: heatmaps + hover strip

The widgets are the report's (`qkov.report.widgets`), so a notebook and report.html draw a
head the same way."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from qkov.report.escape import esc
from qkov.report.fmt import num
from qkov.report.svg import hbar_chart
from qkov.report.widgets import (
    DENSE_HEADS,
    attention_html,
    fragment,
    head_rows,
    head_table,
    shown_tokens,
    token_table,
)
from qkov.reprs import preview, tensor


def head_classification_html(classification: Any) -> str:
    """A `HeadClassification` (or its records) as the report's head table; past DENSE_HEADS
    heads it scrolls in a box of its own, its header kept (as in the report)."""
    return fragment(head_table(classification, tall=len(head_rows(classification)) > DENSE_HEADS))


def skip_trigrams_html(trigrams: Sequence[Any], title: str = "skip-trigrams") -> str:
    """`SkipTrigram`s as a table `source ... destination -> out` with their scores."""
    rows = [t.to_dict() if hasattr(t, "to_dict") else dict(t) for t in trigrams]
    rows = [
        {"s": r["source_str"], "d": r["destination_str"], "o": r["out_str"], "v": r["score"]}
        for r in rows
    ]
    cols = [("s", "source"), ("d", "\u2026 destination"), ("o", "\u2192 out")]
    return fragment(f"<h4>{esc(title)}</h4>" + token_table(rows, cols, ("v", "score")))


def path_expansion_html(expansion: Any, k: int = 16) -> str:
    """A `PathExpansion`: its k largest terms by logit RMS (a bar each), the rest summed,
    and how closely the terms sum to the model's logits."""
    terms = sorted(expansion.terms, key=lambda t: -float(t.logits.float().pow(2).mean().sqrt()))
    items = [(t.name, float(t.logits.float().pow(2).mean().sqrt())) for t in terms[:k]]
    rest = len(terms) - len(items)
    shape = list(expansion.logits.shape)
    note = (
        f"{len(expansion.terms)} terms ({len(expansion.direct)} direct, "
        f"{len(expansion.heads)} head, {len(expansion.virtual_heads)} virtual-head) of "
        f"logits {shape}; |sum of terms - logits| \u2264 {_upper(expansion.max_abs_error())}"
        + (f"; {rest} smaller terms not drawn" if rest > 0 else "")
    )
    chart = hbar_chart(items, "path expansion: logit RMS per term", width=560)
    cap = "bar: the RMS of a term's logits over batch, positions and vocabulary; largest first"
    return fragment(
        f'<p class="note">{esc(note)}</p>'
        f"<figure>{chart}<figcaption>{esc(cap)}</figcaption></figure>"
    )


def _upper(x: float) -> str:
    """A small non-negative error, two significant digits, never rounded below its value
    (0.0043 -> 0.0044, 2.7e-06 -> 2.7e-06): a bound must not read 0.00."""
    x = float(x)
    if not math.isfinite(x) or x <= 0:
        return num(x)
    text = f"{x:.2g}"
    if float(text) < x:
        text = f"{x * (1 + 1e-12) + 10 ** (math.floor(math.log10(x)) - 1):.2g}"
    return text


@dataclass(frozen=True)
class AttentionPatterns:
    """Every head's attention on one text: tokens (their strings) and pattern
    [n_layers, n_heads, destination, source]. In a notebook: a heatmap per head and a token
    strip whose hover lights up a destination's sources (CircuitsVis-style, offline)."""

    tokens: list[str]
    pattern: Tensor  # [n_layers, n_heads, dest, src]

    def to_dict(self) -> dict[str, Any]:
        return {"tokens": list(self.tokens), "pattern": self.pattern.tolist()}

    def __repr__(self) -> str:
        names = ("layer", "head", "dest", "src")
        return (
            f"AttentionPatterns({preview(self.tokens)}: {len(self.tokens)} tokens,\n"
            f"  pattern {tensor(self.pattern, names)})"
        )

    def _repr_html_(self) -> str:
        # only the tokens the view draws leave the tensor (GPT-2 on 1024 tokens: 151M weights)
        n = shown_tokens(int(self.pattern.shape[0] * self.pattern.shape[1]), len(self.tokens))
        return attention_html(self.tokens, self.pattern[:, :, :n, :n].tolist())


@torch.no_grad()
def attention(model: Any, text: str | Tensor) -> AttentionPatterns:
    """Attention patterns of every head on a text (encoded with the model's tokenizer) or
    on token ids [pos]; refused (QkovError) past n_ctx, as `model.check_tokens` says."""
    from qkov.data.tokenizer import decode_token, no_tokenizer
    from qkov.errors import QkovError
    from qkov.heads import attention_patterns

    if not model.cfg.n_layers:
        raise QkovError("this model has 0 layers: it has no heads, so no attention to show")
    if isinstance(text, str):
        if model.tokenizer is None:
            raise QkovError(
                no_tokenizer("the model", "a text cannot be encoded (or give token ids)")
            )
        text = torch.tensor(model.tokenizer.encode(text).ids, dtype=torch.long)
    tokens = model.check_tokens(text)[:1]
    pattern = attention_patterns(model, tokens)[:, 0]  # [n_layers, n_heads, dest, src]
    strings = [decode_token(model.tokenizer, t) for t in tokens[0].tolist()]
    return AttentionPatterns(strings, pattern)
