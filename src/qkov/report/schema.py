"""The analysis dict (the content of analysis.json), version 1.

analysis.json holds every number the report shows; report.html is drawn from it alone,
so a report can be re-rendered, diffed or read by other tools without the model.
Row-vector convention (x @ W) as everywhere in qkov. Any key below may be absent or
null: the report then says "not computed" (with the reason from `not_computed` if given).

    {
      "schema_version": 1,
      "generator": "qkov 0.1.0",
      "models": [ MODEL, ... ]            # first = the main model; e.g. 0, 1, 2 layers
    }

    MODEL = {
      "name": str,                         # "2L", or the checkpoint dir name
      "source": str | null,                # checkpoint dir
      "config": {ModelConfig fields},      # n_layers, n_heads, d_model, d_head, n_ctx, ...
      "n_params": int,
      "tokenizer": {"vocab_size": int} | null,
      "loss": {"value": float, "tokens": int, "source": str} | null,  # nats/token
      "val_loss": {"value": float, "step": int} | null,  # last val_loss in metrics.jsonl
      "bigrams": [{"source": str, "out": str, "logit": float}],  # direct path W_E W_U,
                                           # each row centred (softmax ignores a row constant)
      "heads": [HEAD, ...],
      "attention": {"tokens": [str], "patterns": [[[[float]]]],  # [layer][head][dest][src]
                    "source": str},
      "composition": {"q"|"k"|"v": [[[[float|null]]]],  # [l_earlier][h_earlier][l_later][h_later]
                      "baseline": {"q"|"k"|"v": float},  # mean score of random heads
                      "baseline_std": {"q"|"k"|"v": float}},
      "induction_circuits": [{"previous_token_head": [l, h], "induction_head": [l, h],
                              "k_composition": float, "k_composition_z": float,
                              "partner_role": str, "previous_token_score": float,
                              "induction_score": float, "qk_term_eigenvalue_score": float}],
      "term_importance": {"clean_loss": float, "mode": "zero"|"mean", "n_tokens": int,
                          "source": str,
                          "terms": [{"term": str, "kind": "order"|"head",
                                     "order": int, "loss_increase": float}]},
      "icl_score": float | null,           # loss at a late token minus loss at an early token
      "training": {"series": {name: [[step, value], ...]}},             # from metrics.jsonl
      "not_computed": {section: reason}    # why a section is missing
    }

    HEAD = {
      "layer": int, "head": int,
      "role": str | null,                  # "induction", "previous_token", "copying", ...
      "scores": {name: float},             # previous_token_score, induction_score, ...
      "copying": float | null,             # sum(lambda) / sum(|lambda|) of the OV circuit
      "ov_eigenvalues": [[re, im], ...],   # nonzero eigenvalues of W_E W_OV W_U
      "qk_eigenvalues": [[re, im], ...],   # of W_E W_QK W_E^T
      "skip_trigrams": [{"source": str, "destination": str, "out": str, "score": float}]
    }
"""

from __future__ import annotations

from typing import Any

from qkov.errors import QkovError

SCHEMA_VERSION = 1

SECTIONS = (
    "bigrams",
    "heads",
    "attention",
    "composition",
    "induction_circuits",
    "term_importance",
    "icl_score",
    "training",
    "loss",
)


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
