"""What `qkov analyze` computes exactly and what it estimates or cuts, chosen by cost.

Every analysis is exact while its cost, in multiply-adds, stays under its budget below;
above it, `Budget` says what is sampled (with a seed) or cut (with an exact remainder),
and analysis.json records the plan under "budget" so the report can say which numbers are
estimates. The demo models (2,048 tokens, 8 heads) are under every budget: all exact."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from qkov.config import ModelConfig
from qkov.data.probes import default_seq_len
from qkov.heads import copying_columns
from qkov.paths import count_paths, largest_order, start_names
from qkov.qk_terms import QK_MAX_ORDER

MAX_EXAMPLE_TOKENS = 48  # tokens of the example text the attention views and attribution read
BIGRAM_BUDGET = 2**34  # rows * d_vocab * d_model of the direct path, once per model
TRIGRAM_BUDGET = 2**29  # sources * d_vocab * d_head of a head's two circuits, per head
SPLIT_BUDGET = 2**29  # candidates * d_model * d_head of a head's token-split trigrams, per head
FORWARD_BUDGET = 3 * 2**37  # evaluation tokens * parameters: the forward passes on the eval set
KNOCKOUT_BUDGET = 2**43  # heads * tokens * parameters: one forward pass per head knock-out
PARTNER_BUDGET = 2**40  # tokens * layers run * a layer's multiply-adds: induction partner
# knock-outs (`classify_heads`), one pass per earlier head from its layer on (~15 s here)
PATH_BUDGET = 2**27  # paths * tokens * d_model: the streams the attribution keeps (512 MiB)
ORDER_BUDGET = 2**38  # starts * layer-order pairs * tokens * d_model^2: the order split
QK_SIDES_LIMIT = 256  # query-side (and key-side) paths per head for the QK terms


@dataclass(frozen=True)
class Budget:
    """What `analyze_model` samples or cuts for a model of this size (None/True: exact).

    bigram_rows: top_bigrams over a seeded sample of that many current tokens (estimate);
    trigram_sources: each head's skip-trigrams over a seeded sample of sources (estimate);
    split_candidates: the most token-split candidates a head's split trigrams are ranked over
    (a seeded sample of the tokenizer's candidates past it: estimate, said where it is);
    copying_columns: the copying score ranks among a seeded sample of logits (estimate);
    n_sequences: evaluation sequences kept; term_importance_on: [sequences, positions] of
    the evaluation set term importance reads (its first ones; None: all of it);
    head_knockouts: per-head knock-outs in term importance;
    path_max_order: the attribution's path expansion cut (exact remainder term "order>k");
    qk_terms: the per-head QK expansion (qk_sides: its query-side paths per head)."""

    bigram_rows: int | None
    trigram_sources: int | None
    split_candidates: int
    copying_columns: int | None
    n_sequences: int
    term_importance_on: list[int] | None
    head_knockouts: bool
    path_max_order: int | None
    qk_terms: bool
    qk_sides: int

    @staticmethod
    def of(cfg: ModelConfig, tokens: Tensor) -> Budget:
        """The plan for cfg and the evaluation tokens [n_sequences, seq_len]."""
        V, n_heads = cfg.d_vocab, cfg.n_layers * cfg.n_heads
        per_seq = tokens.shape[1] * max(1, cfg.n_params)
        n_seq = max(1, min(tokens.shape[0], FORWARD_BUDGET // per_seq))
        n_tok = n_seq * tokens.shape[1]
        term_on = _term_importance_on(cfg, n_seq, tokens.shape[1])
        knock = n_heads * n_tok * cfg.n_params
        probe = 16 * default_seq_len(cfg.n_ctx)  # classify_heads' probe tokens
        return Budget(
            bigram_rows=_rows(V, cfg.d_model, BIGRAM_BUDGET),
            trigram_sources=trigram_sources(cfg),
            split_candidates=split_candidates(cfg),
            copying_columns=copying_columns(V, probe, cfg.d_head),
            n_sequences=n_seq,
            term_importance_on=term_on,
            head_knockouts=term_on is None and knock <= KNOCKOUT_BUDGET,
            path_max_order=attribution_max_order(cfg, min(MAX_EXAMPLE_TOKENS, cfg.n_ctx)),
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


def trigram_sources(cfg: ModelConfig) -> int | None:
    """Source tokens a head's skip-trigrams (and its OV top-1 fraction) are ranked over:
    None (all, exact) while d_vocab^2 * d_head fits TRIGRAM_BUDGET, else a seeded sample."""
    return _rows(cfg.d_vocab, cfg.d_head, TRIGRAM_BUDGET)


def split_candidates(cfg: ModelConfig) -> int:
    """Token-split candidates (source, destination, out) a head's split trigrams are ranked
    over before they are sampled: each costs ~4 d_model x d_head products per head, and a
    real 50k tokenizer has ~10^5 of them (a few seconds per head; Pythia-410m has 384)."""
    return max(1, SPLIT_BUDGET // (cfg.d_model * cfg.d_head))


def attribution_max_order(cfg: ModelConfig, n_tokens: int) -> int | None:
    """The attribution's cut for n_tokens tokens: None (every chain) while the streams
    `qkov.attribution.path_contributions` keeps (paths x tokens x d_model) fit PATH_BUDGET,
    else the largest max_order that fits (0 at least). `qkov explore` and `qkov attribute`
    cut where analyze does."""
    return largest_order(cfg, lambda k: count_paths(cfg, k) * n_tokens * cfg.d_model <= PATH_BUDGET)


def _qk_sides(cfg: ModelConfig, max_order: int) -> int:
    """Query-side paths of the last layer's heads in the QK expansion (the shortformer's
    W_pos side aside)."""
    return count_paths(cfg, max_order, cfg.n_layers - 1) if cfg.n_layers else 0


def knockout_cost(cfg: ModelConfig, layer: int, last: int, tokens: int, seq_len: int) -> int:
    """Multiply-adds of one knock-out pass over `tokens` tokens (sequences of seq_len) run
    from `layer` through the attention of layer `last`: Q, K, V, O and the scores and
    values per token and layer, and the MLP of each layer before `last`."""
    attention = 2 * cfg.d_model * cfg.d_head * (cfg.n_heads + cfg.n_kv_heads)
    attention += 2 * seq_len * cfg.d_head * cfg.n_heads
    mlp = (3 if cfg.gated_mlp else 2) * cfg.d_model * cfg.d_mlp
    return tokens * ((last - layer + 1) * attention + (last - layer) * mlp)


def partner_knockouts(
    cfg: ModelConfig, ranked: list[tuple[int, int]], last: int, tokens: int, seq_len: int
) -> list[tuple[int, int]]:
    """The earlier heads `classify_heads` knocks out: all of `ranked` (the candidates, most
    likely partners first) while their passes fit PARTNER_BUDGET, else its first ones that
    fit (the rest are not knocked out; the classification says so)."""
    out, spent = [], 0
    for l0, h0 in ranked:
        spent += knockout_cost(cfg, l0, last, tokens, seq_len)
        if spent > PARTNER_BUDGET:
            break
        out.append((l0, h0))
    return out
