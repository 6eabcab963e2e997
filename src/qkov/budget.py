"""What `qkov analyze` computes exactly and what it estimates or cuts, chosen by cost.

Every analysis is exact while its cost, in multiply-adds, stays under its budget below;
above it, `ScalePlan` says what is sampled (with a seed) or cut (with an exact remainder),
and analysis.json records the plan under "scale" so the report can say which numbers are
estimates. The demo models (2,048 tokens, 8 heads) are under every budget: all exact."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from qkov.config import ModelConfig
from qkov.data.probes import default_seq_len
from qkov.heads import copying_columns
from qkov.paths import start_names
from qkov.qk_terms import QK_MAX_ORDER

MAX_SAMPLE_TOKENS = 48  # tokens of the sample text the attention views and attribution read
BIGRAM_BUDGET = 2**34  # rows * d_vocab * d_model of the direct path, once per model
TRIGRAM_BUDGET = 2**29  # sources * d_vocab * d_head of a head's two circuits, per head
FORWARD_BUDGET = 3 * 2**37  # evaluation tokens * parameters: the forward passes on the eval set
KNOCKOUT_BUDGET = 2**43  # heads * tokens * parameters: one forward pass per head knock-out
TERM_BUDGET = 2**28  # path terms * tokens * d_vocab: the logits path_expansion forms
ORDER_BUDGET = 2**38  # starts * layer-order pairs * tokens * d_model^2: the order split
QK_SIDES_LIMIT = 256  # query-side (and key-side) paths per head for the QK terms


@dataclass(frozen=True)
class ScalePlan:
    """What `analyze_model` samples or cuts for a model of this size (None/True: exact).

    bigram_rows: top_bigrams over a seeded sample of that many current tokens (estimate);
    trigram_sources: each head's skip-trigrams over a seeded sample of sources (estimate);
    copying_columns: the copying score ranks among a seeded sample of logits (estimate);
    n_sequences: evaluation sequences kept; term_importance_on: [sequences, positions] of
    the evaluation set term importance reads (its first ones; None: all of it);
    head_knockouts: per-head knock-outs in term importance;
    path_max_order: the attribution's path expansion cut (exact remainder term "order>k");
    qk_terms: the per-head QK expansion (qk_sides: its query-side paths per head)."""

    bigram_rows: int | None
    trigram_sources: int | None
    copying_columns: int | None
    n_sequences: int
    term_importance_on: list[int] | None
    head_knockouts: bool
    path_max_order: int | None
    qk_terms: bool
    qk_sides: int

    @staticmethod
    def of(cfg: ModelConfig, tokens: Tensor) -> ScalePlan:
        """The plan for cfg and the evaluation tokens [n_sequences, seq_len]."""
        V, n_heads = cfg.d_vocab, cfg.n_layers * cfg.n_heads
        per_seq = tokens.shape[1] * max(1, cfg.n_params)
        n_seq = max(1, min(tokens.shape[0], FORWARD_BUDGET // per_seq))
        n_tok = n_seq * tokens.shape[1]
        term_on = _term_importance_on(cfg, n_seq, tokens.shape[1])
        knock = n_heads * n_tok * cfg.n_params
        probe = 16 * default_seq_len(cfg.n_ctx)  # classify_heads' probe tokens
        return ScalePlan(
            bigram_rows=_rows(V, cfg.d_model, BIGRAM_BUDGET),
            trigram_sources=_rows(V, cfg.d_head, TRIGRAM_BUDGET),
            copying_columns=copying_columns(V, probe, cfg.d_head),
            n_sequences=n_seq,
            term_importance_on=term_on,
            head_knockouts=term_on is None and knock <= KNOCKOUT_BUDGET,
            path_max_order=_path_max_order(cfg, min(MAX_SAMPLE_TOKENS, cfg.n_ctx)),
            qk_terms=_qk_sides(cfg, QK_MAX_ORDER) <= QK_SIDES_LIMIT,
            qk_sides=_qk_sides(cfg, QK_MAX_ORDER),
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _term_importance_on(cfg: ModelConfig, n_seq: int, seq_len: int) -> list[int] | None:
    """None when the order split (`qkov.ablation.start_order_residuals`: every start's
    stream at every order through every layer) of n_seq x seq_len tokens fits ORDER_BUDGET;
    else the [sequences, positions] that fit: whole sequences if one fits, else the first
    positions of the first sequence."""
    L = cfg.n_layers
    per_token = len(start_names(cfg)) * max(1, L * (L + 1) // 2) * cfg.d_model**2 * 2
    fit = ORDER_BUDGET // per_token
    if n_seq * seq_len <= fit:
        return None
    if fit >= seq_len:
        return [fit // seq_len, seq_len]
    return [1, max(2, fit)]


def _rows(d_vocab: int, inner: int, budget: int) -> int | None:
    """None (every row) when d_vocab^2 * inner fits the budget, else the rows that fit."""
    if d_vocab * d_vocab * inner <= budget:
        return None
    return max(1, budget // (d_vocab * inner))


def _n_paths(cfg: ModelConfig, max_order: int | None, n_layers: int | None = None) -> int:
    """An upper bound on path_expansion's terms: starts x chains of at most max_order heads
    through n_layers layers (default all) (+ the remainder)."""
    L, H = cfg.n_layers if n_layers is None else n_layers, cfg.n_heads
    top = L if max_order is None else min(L, max_order)
    starts = 2 + bool(cfg.bias) + (L if cfg.d_mlp else 0)
    return starts * sum(math.comb(L, k) * H**k for k in range(top + 1)) + 1


def _path_max_order(cfg: ModelConfig, n_tokens: int) -> int | None:
    """The longest cut whose terms' logits fit TERM_BUDGET: None (every chain), else the
    largest max_order that fits (0 at least: per-start direct terms + the exact remainder)."""
    for order in (None, *range(cfg.n_layers - 1, 0, -1)):
        if _n_paths(cfg, order) * n_tokens * cfg.d_vocab <= TERM_BUDGET:
            return order
    return 0


def _qk_sides(cfg: ModelConfig, max_order: int) -> int:
    """Query-side paths of the last layer's heads in the QK expansion (an upper bound)."""
    return _n_paths(cfg, max_order, cfg.n_layers - 1) if cfg.n_layers else 0
