"""The analysis dict (the content of analysis.json), version 2.

Version 2 grew additively (old files still read, so the version stays): qk_terms,
virtual_heads, positional_qk, attribution and each head's split_token_trigrams; term kind "mlp"
for models with MLPs, whose config also has d_mlp, act_fn, bias and normalization
"layernorm"/"rmsnorm" (ModelConfig's fields, as every config key). "budget" was written
"scale" before 2026-12-06 (a word the norm's divisor also uses); an induction circuit's
"partner_head" was written "previous_token_head" before 2026-12-07 (the partner is not always
a previous-token head); the report reads both.

analysis.json holds every number the report shows; report.html is drawn from it alone
(`qkov report analysis.json --out DIR` re-renders it), so a report can be re-rendered,
diffed or read by other tools without the model. Row-vector convention (x @ W) as
everywhere in qkov. Any key below may be absent or null: the report then says "not
computed" (with the reason from `not_computed` if given). Names are the library's: a head's
`label` is what `classify_heads` returns, its `scores` are `HeadScores` fields.

    {
      "schema_version": 2,
      "generator": "qkov 0.1.0",
      "models": [ MODEL, ... ]            # first = the main model; e.g. 2, 1, 0 layers
    }

    MODEL = {
      "name": str,                         # "attn2", or the checkpoint dir name
      "checkpoint": str | null,            # the checkpoint directory it was loaded from
      "config": {ModelConfig fields},      # n_layers, n_heads, d_model, d_head, n_ctx, ...,
                                           # d_mlp (0: attention-only), act_fn, bias,
                                           # normalization (none|rms|layernorm|rmsnorm);
                                           # a Hugging Face folder's without seed, init_std,
                                           # pos_init_std (config.TRAINING_ONLY)
      "n_params": int,
      "trained": {TrainConfig fields} | null,  # the run's train_config.json as written
                                           # (null: no record, e.g. a Hugging Face folder)
      "tokenizer": {"vocab_size": int} | null,
      "evaluation": {                      # THE evaluation set: loss, icl, term importance
        "description": str,                # e.g. "held-out documents of --corpus stdlib"
        "kind": "text" | "random_tokens",  # text: real text; random_tokens: the probe
        "n_sequences": int, "seq_len": int,
        "n_tokens": int                    # predicted tokens: n_sequences * (seq_len - 1)
      } | null,
      "loss": {"value": float, "n_tokens": int} | null,  # nats/token on the evaluation set
      "icl": {                             # in-context learning score on the evaluation set
        "score": float,                    # mean loss in the late window - in the early one
        "stderr": float,                   # standard error of that mean over sequences
        "early": [int, int], "late": [int, int],  # position windows [start, stop)
        "n_sequences": int
      } | null,
      "probe_icl_score": float | null,     # the same on the random-token probe (training probe)
      "bigrams": [{"current": str, "out": str, "logit": float}],  # direct path W_E W_U,
                                           # each row centred (softmax ignores a row constant)
      "final_scale": {"median": float, "p10": float, "p90": float, "n_positions": int},
                                           # optional: the final norm's divisor per position
                                           # on the evaluation text (absent: no final norm);
                                           # skip-trigram scores (OV circuits) are
                                           # written before it: logit = value / scale
      "embedding_rms": {"median": float, "p10": float, "p90": float, "n_tokens": int},
                                           # optional, with final_scale where the bigram
                                           # table is not the logits (layers, or W_pos in
                                           # the stream): the RMS of W_E's rows, which the
                                           # table divides by; logit = value x rms / scale
      "token_filter": {"min_count": int, "n_kept": int, "n_tokens": int} | null,
                                           # skip-trigrams rank only tokens seen >= min_count
                                           # times in training (n_kept of n_tokens); null:
                                           # all tokens (no counts recorded, or asked for)
      "heads": [HEAD, ...],
      "attention": {"tokens": [str], "patterns": [[[[float]]]],  # [layer][head][dest][src]
                    "text": str},          # what the tokens are, e.g. "example text"
      "composition": {"q"|"k"|"v": [[[[float|null]]]],  # [l_earlier][h_earlier][l_later][h_later]
                      "baseline": {"q"|"k"|"v": float},  # mean score of random heads
                      "baseline_std": {"q"|"k"|"v": float}},
      "induction_circuits": [{"partner_head": [l, h],  # composition.choose_partner
                              "induction_head": [l, h],
                              "k_composition": float, "k_composition_z": float,
                              "partner_label": str,
                              "previous_token_score": float,  # the partner's
                              "induction_score": float, "qk_term_eigenvalue_score": float,
                              "knockout_head": [l, h] | null,  # the earlier head whose
                              "knockout_drop": float | null,  # zeroing lowers its score most
                              "knockouts": int}],  # earlier heads knocked out: fewer than
                                           # layer x n_heads past budget.PARTNER_BUDGET
      "repetition": {"batch": int, "half_len": int, "seed": int,  # random tokens, a block
                     "induction_scores": [[float]],  # of half_len repeated once: per head
                     "first_half_loss": float, "repeated_half_loss": float,
                     "uniform_loss": float,        # ln d_vocab
                     "repeated_fraction": float,   # repeated_half_loss / uniform_loss
                     "repeated_token_logit": {"logit": float, "log_sum_exp": float,
                                              "writers": {str: float},
                                              "rival_logit": float,
                                              "rival_writers": {str: float},
                                              "loss_without": {str: float}},
                     "by_training_count": [{"count_from": int, "count_below": int,
                                            "predictions": int, "loss": float,
                                            "first_logit": float, "repeated_logit": float,
                                            "lift": float, "label": str}] | null},
                                           # repeated half: loss = log_sum_exp - logit
                                           # (the repeated token's), both less the mean
                                           # logit; writers split logit exactly, and
                                           # rival_writers the logit of the strongest
                                           # other token at each prediction; loss_without:
                                           # the repeated half's loss without one layer's
                                           # direct write ("embed", "attn0", "mlp0", ...);
                                           # by_training_count: the repeated half's loss by
                                           # the token's count in the training split
                                           # (decades; null: no token_counts.json), with its
                                           # logit (less the mean) where the first half and
                                           # where the repeat predict it; lift: their
                                           # difference
      "term_importance": {"clean_loss": float, "mode": "zero"|"mean", "n_tokens": int,
                          "terms": [{"term": str, "kind": "order"|"head"|"mlp",
                                     "order": int, "loss_increase": float}]},
                                           # on the evaluation set. kind "order": every path
                                           # through `order` heads ablated (patterns frozen);
                                           # an order counts heads only: the embeddings, the
                                           # biases and each MLP's output start paths, order
                                           # 0. "head": one head knocked out (order 1);
                                           # "mlp": one MLP's output set to 0 (order 0), later
                                           # layers see the change. Layer-major order.
      "training": {"series": {name: [[tokens, value], ...]},   # from metrics.jsonl; x is
                                           # tokens seen (a two-stage run continues its base)
                   "last_val_loss": {"value": float, "step": int, "tokens": float} | null,
                   "circuit_heads": {"induction_head": str, "partner_head": str} | null},
                                           # series probe_k_composition, probe_qk_eigenvalue,
                                           # probe_ov_eigenvalue: qkov.induction_circuit;
                                           # repetition_*: the repetition test along training
                                           # (qkov.repetition.repetition_record)
      "phase_change": {"tokens": [float, float]} | null,  # where the probe induction score
                                           # crosses from < 0.1 to >= half its final value
      "head_scores_measured_on": {         # what each HEAD's scores rest on:
        "probe": {"n_sequences": int, "seq_len": int, "seed": int},  # "scores"
        "text": {"n_sequences": int, "seq_len": int,  # "text_scores": the first
                 "of_sequences": int} | null},  # n_sequences of the evaluation set's
      "qk_terms_measured_on": {"n_sequences": int, "seq_len": int},  # the evaluation
                                           # sequences (their first tokens) of qk_terms
      "qk_terms": [{"layer": int, "head": int,      # qkov.qk_expansion on the evaluation set:
                    "kinds": [{"kind": str, "size": float}],  # direct | Q-composition |
                                           # K-composition | Q+K-composition, largest first
                    "terms": [{"name": str, "kind": str, "query": str, "key": str,
                               "size": float}],  # the largest (query side . key side) terms
                    "n_terms": int, "max_abs_error": float}],
      "virtual_heads": [{"heads": [[l0, h0], [l1, h1]], "name": str, "v_composition": float,
                         "ov_eigenvalue_score": float}],  # by V-composition, highest first
      "positional_qk": [{"head": [0, h], "scores": [[float]]}],  # W_pos W_QK W_pos^T /
                                           # sqrt(d_head) [destination][source], first positions
      "attribution": {"text": str, "tokens": [str], "predicted": [str], "paths": [str],
                      "orders": [int],     # each path's order (heads on it); optional
                      "logit": [float],    # logit of tokens[i + 1] at position i
                      "contributions": [[float]],  # [position][path], summing to logit
                      "max_abs_error": float},
      "budget": {                          # qkov.budget.Budget: what a large model got
        "bigram_rows": int | null,         #   as a seeded sample (null: exact, every row):
        "trigram_sources": int | null,     #   bigram rows, skip-trigram sources,
        "split_candidates": int,           #   (the most token-split candidates per head)
        "copying_columns": int | null,     #   copying-score logit columns;
        "n_sequences": int, "term_importance_on": [int, int] | null,  # [seqs, positions]
        "head_knockouts": bool,
        "path_max_order": int | null,      #   attribution cut (exact remainder "order>k")
        "qk_terms": bool, "qk_sides": int
      } | null,
      "not_computed": {section: reason}    # why a section is missing
    }

    HEAD = {
      "layer": int, "head": int,
      "label": str,                        # induction, previous_token, duplicate_token,
                                           # copying, positional, other
      "decided_by": str | null, "threshold": float | null,
      "scores": {name: float|null},        # HeadScores on the random-token probe: previous_token,
                                           # induction, prefix_matching, duplicate_token,
                                           # copying (behavioural), positional
      "text_scores": {name: float|null} | null,  # the same on the evaluation text (kind text)
      "ov_eigenvalue_score": float | null, # sum(lambda) / sum(|lambda|) of the OV circuit
      "ov_eigenvalues": [[re, im], ...],   # nonzero eigenvalues of W_E W_OV W_U
      "qk_eigenvalues": [[re, im], ...],   # of W_E W_QK W_E^T
      "skip_trigrams": [{"source": str, "destination": str, "out": str, "score": float}],
      "split_token_trigrams": {"n_candidates": int, "n_favoured": int,  # [ab] ... [a] -> [b]
                               "of_candidates": int,  # optional: n_candidates is a seeded
                                                      # sample of these (budget.split_candidates)
                               "trigrams": [{"source": str, "destination": str, "out": str,
                                             "score": float}]}
    }
"""

from __future__ import annotations

from typing import Any

from qkov.errors import QkovError

SCHEMA_VERSION = 2


def validate(analysis: Any, source: str = "analysis") -> dict[str, Any]:
    """Check the top-level shape and version; returns the dict. Raises QkovError."""
    if not isinstance(analysis, dict):
        raise QkovError(f"{source} must be a JSON object, got {type(analysis).__name__}")
    version = analysis.get("schema_version")
    if version is None:
        raise QkovError(f"{source} has no schema_version: was it written by `qkov analyze`?")
    if version != SCHEMA_VERSION:
        raise QkovError(
            f"{source} has schema_version {version!r} but this qkov reads version "
            f"{SCHEMA_VERSION}: rerun `qkov analyze` to regenerate it"
        )
    models = analysis.get("models")
    if not isinstance(models, list) or not models:
        raise QkovError(f"{source} has no models: expected a non-empty list under 'models'")
    for i, m in enumerate(models):
        if not isinstance(m, dict):
            raise QkovError(f"{source}: models[{i}] must be an object, got {type(m).__name__}")
        if not isinstance(m.get("config"), dict):
            raise QkovError(f"{source}: models[{i}] has no 'config' object")
    return analysis
