"""qkov: reverse-engineer transformers into circuits (Elhage et al., 2021).

The public names below load on first use (PEP 562), so `import qkov` and `qkov --help`
do not pay for importing torch."""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "icl_score": "qkov.icl",
    "attribute": "qkov.attribution",
    "evaluation_set": "qkov.data.evaluation",
    "term_importance": "qkov.ablation",
    "load": "qkov.checkpoint",
    "save_model": "qkov.checkpoint",
    "W_OV": "qkov.circuits",
    "W_QK": "qkov.circuits",
    "direct_path": "qkov.circuits",
    "ov_circuit": "qkov.circuits",
    "ov_statistics": "qkov.eigenvalues",
    "ov_statistics_all": "qkov.eigenvalues",
    "ov_copying": "qkov.eigenvalues",
    "ov_copying_all": "qkov.eigenvalues",
    "top_bigrams": "qkov.circuits",
    "induction_qk_term": "qkov.circuits",
    "path_expansion": "qkov.paths",
    "qk_circuit": "qkov.circuits",
    "qk_positional_terms": "qkov.circuits",
    "positional_qk": "qkov.circuits",
    "virtual_head_ov": "qkov.virtual_heads",
    "qk_expansion": "qkov.qk_terms",
    "composition_score": "qkov.composition",
    "composition_scores": "qkov.composition",
    "ModelConfig": "qkov.config",
    "shipped": "qkov.demo_models",
    "QkovError": "qkov.errors",
    "FactoredMatrix": "qkov.factored",
    "fold_layernorm": "qkov.fold",
    "classify_heads": "qkov.classification",
    "head_scores": "qkov.heads",
    "AttnOnlyTransformer": "qkov.model",
    "Transformer": "qkov.model",
    "training_probe": "qkov.training_probe",
    "factoring_bugs": "qkov.trigrams",
    "skip_trigrams": "qkov.trigrams",
    "split_token_trigrams": "qkov.split_tokens",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'qkov' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # the next access skips this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
