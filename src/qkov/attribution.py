"""Per-token logit attribution on a text: which paths push the actual next token's logit up or down.

Built on `qkov.paths.path_expansion`: with the attention patterns, norm scales and MLP
outputs frozen at the forward pass, the logits are exactly a sum of paths (the direct
path, each head, each virtual head, each bias and MLP start), so at every position the
logit of the token that actually comes next is exactly the sum of its paths'
contributions. Exact on every architecture path_expansion is (to float rounding).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from qkov.data.tokenizer import decode_token, known_ids, no_tokenizer
from qkov.errors import QkovError
from qkov.model import Transformer
from qkov.paths import PathTerm, unembedded_paths
from qkov.reprs import capped, num, preview, tensor, wrap


@dataclass
class Attribution:
    """contributions[i, p]: what path p adds to the logit of tokens[i + 1] at position i.

    tokens [pos]; predicted [pos - 1] (argmax of the logits at each position); logit
    [pos - 1] (the model's logit of the actual next token, = contributions.sum(-1))."""

    tokens: Tensor  # [pos] ids
    token_strs: list[str]
    paths: list[str]  # path names, as PathTerm.name ("direct", "L1H0", "L0H3>L1H0", ...)
    contributions: Tensor = field(repr=False)  # [pos - 1, n_paths]
    predicted: Tensor = field(repr=False)  # [pos - 1] ids
    logit: Tensor = field(repr=False)  # [pos - 1]
    predicted_strs: list[str] = field(default_factory=list, repr=False)
    # each path's order (heads on it; a remainder: max_order + 1); empty once by_head grouped
    orders: list[int] = field(default_factory=list, repr=False)

    def by_head(self) -> Attribution:
        """The same attribution with paths grouped by the head that writes them into the
        stream (the last head of the chain: "L0H0>L1H2" and "L1H2" both go to "L1H2");
        paths through no head keep their names ("direct", MLP and bias starts). Still
        exact: each group is a sum of terms."""
        groups: dict[str, list[int]] = {}
        for i, name in enumerate(self.paths):
            base = name.split("[")[0]
            key = base.split(">")[-1] if base.startswith("L") else name
            groups.setdefault(key, []).append(i)
        names = list(groups)
        contributions = torch.stack(
            [self.contributions[:, idx].sum(-1) for idx in groups.values()], dim=-1
        )
        return dataclasses.replace(self, paths=names, contributions=contributions, orders=[])

    def max_abs_error(self) -> float:
        """max |sum of contributions - the model's logit of the next token|."""
        return float((self.contributions.sum(-1) - self.logit).abs().max())

    def top(
        self, position: int, k: int = 3
    ) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
        """The k paths pushing the next token's logit up most (largest first) and the k
        pushing it down most (most negative first), at `position`."""
        c = self.contributions[position]
        order = c.argsort(descending=True).tolist()
        up = [(self.paths[p], float(c[p])) for p in order[:k] if c[p] > 0]
        down = [(self.paths[p], float(c[p])) for p in reversed(order[-k:]) if c[p] < 0]
        return up, down

    def lines(self, k: int = 3) -> list[str]:
        """One line per position: the token, the actual next token, the prediction, the
        next token's logit, and its top paths up | down."""
        head = f"{'pos':>4}  {'token':<14} {'next':<14} {'predicted':<14} {'logit':>7}"
        out = [head + "  paths up | down"]
        for i in range(len(self.predicted)):
            up, down = self.top(i, k)
            fmt = ", ".join(f"{n} {v:+.2f}" for n, v in up) or "-"
            fmt += " | " + (", ".join(f"{n} {v:+.2f}" for n, v in down) or "-")
            cur, nxt = self.token_strs[i], self.token_strs[i + 1]
            pred = self.predicted_strs[i]
            mark = " " if int(self.predicted[i]) == int(self.tokens[i + 1]) else "*"
            out.append(
                f"{i:>4}  {cur!r:<14} {nxt!r:<14} {pred!r:<13}{mark} "
                f"{float(self.logit[i]):7.2f}  {fmt}"
            )
        return out

    def __repr__(self) -> str:
        c = self.contributions
        hits = int((self.predicted == self.tokens[1 : len(self.predicted) + 1]).sum())
        lines = [
            f"Attribution({preview(self.token_strs)}: {len(self.token_strs)} tokens, "
            f"{len(self.paths)} paths;",
            f"  contributions {tensor(c, ('pos', 'path'))}, max_abs_error "
            f"{num(self.max_abs_error() if c.numel() else 0.0, '.1e')};",
            f"  next token predicted at {hits} of {len(self.predicted)} positions",
        ]
        if c.numel():
            size = c.abs().mean(0)  # [path]: mean |contribution| over positions
            top = [
                f"{self.paths[p]} {num(float(size[p]), '.2f')}"
                for p in size.argsort(descending=True)
            ]
            lines[-1] += ";"
            lines.append(wrap("largest mean |contribution|: ", capped(top, 5)))
        return "\n".join(lines) + ")"

    def to_dict(self, digits: int = 3) -> dict[str, object]:
        """The report's attribution record: tokens, next-token logits and every path's
        contribution per position (rounded to `digits`)."""
        return {
            "tokens": self.token_strs,
            "predicted": self.predicted_strs,
            "paths": self.paths,
            "orders": self.orders,
            "logit": [round(float(x), digits) for x in self.logit],
            "contributions": [[round(float(x), digits) for x in row] for row in self.contributions],
            "max_abs_error": self.max_abs_error(),
        }


@torch.no_grad()
def path_contributions(
    model: Transformer, tokens: Tensor, targets: Tensor, max_order: int | None = None
) -> tuple[list[PathTerm], Tensor, Tensor]:
    """The math of every attribution qkov shows (`attribute`, `qkov attribute`, the report,
    `qkov explore`): tokens [1, pos], targets [n] (n <= pos: the token whose logit to split
    at each of the first n positions) -> (the path terms, for their names and orders, each
    term's `logits` being its contributions [1, n]; contributions [n, n_paths]; logits
    [n, d_vocab]); contributions.sum(-1) equals logits[i, targets[i]] to float rounding.
    Only the targets' columns of W_U are read: d_model per path and position, not d_vocab."""
    n = targets.shape[0]

    def read(x: Tensor, W_U: Tensor, b_U: Tensor | None) -> Tensor:
        own = (x[:, :n] * W_U[:, targets].T).sum(-1)  # [1, n]: x_i . W_U[:, targets[i]]
        return own if b_U is None else own + b_U[targets]

    terms, logits, _ = unembedded_paths(model, tokens, max_order, read)
    contributions = torch.stack([t.logits[0] for t in terms], dim=-1)  # [n, n_paths]
    return terms, contributions, logits[0, :n]


@torch.no_grad()
def attribute(model: Transformer, tokens: Tensor, max_order: int | None = None) -> Attribution:
    """Attribute each next-token logit of one sequence `tokens` ([pos] or [1, pos], at least
    2 tokens) to the paths of `path_expansion` (see the module docstring). max_order: paths
    through more heads are summed into one remainder path ("order>k")."""
    tokens = model.check_tokens(tokens)
    if tokens.shape[0] != 1:
        raise QkovError(f"attribute takes one sequence, got a batch of {tokens.shape[0]}")
    if tokens.shape[1] < 2:
        raise QkovError("attribute needs at least 2 tokens: a token and the one after it")
    nxt = tokens[0, 1:]  # [pos - 1]
    idx = torch.arange(nxt.shape[0], device=nxt.device)
    terms, contributions, logits = path_contributions(model, tokens, nxt, max_order)
    tok = model.tokenizer
    known = known_ids(model.cfg.d_vocab, tok)  # a padded vocabulary's padding ids: no text
    ranked = logits if known is None else logits.masked_fill(~known.to(logits.device), -math.inf)
    predicted = ranked.argmax(-1)  # [pos - 1]; never a padding id
    return Attribution(
        tokens=tokens[0].cpu(),
        token_strs=[decode_token(tok, i) for i in tokens[0].tolist()],
        paths=[t.name for t in terms],
        contributions=contributions.cpu(),
        predicted=predicted.cpu(),
        logit=logits[idx, nxt].cpu(),
        predicted_strs=[decode_token(tok, i) for i in predicted.tolist()],
        orders=[t.order for t in terms],
    )


def attribute_text(model: Transformer, text: str, max_order: int | None = None) -> Attribution:
    """`attribute` on `text` encoded with the model's tokenizer; a text longer than n_ctx
    tokens is refused (shorten it)."""
    if model.tokenizer is None:
        raise QkovError(
            no_tokenizer("the model", "a text cannot be encoded (or give `attribute` token ids)")
        )
    ids = model.tokenizer.encode(text).ids
    if len(ids) > model.cfg.n_ctx:
        raise QkovError(
            f"the text is {len(ids)} tokens long, more than the model's n_ctx={model.cfg.n_ctx}: "
            "shorten it"
        )
    return attribute(model, torch.tensor(ids), max_order=max_order)
