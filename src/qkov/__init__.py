"""qkov: reverse-engineer attention-only transformers (Elhage et al., 2021)."""

from qkov.ablation import icl_score, term_importance
from qkov.checkpoint import load, save_model
from qkov.circuits import (
    W_OV,
    W_QK,
    direct_path,
    ov_circuit,
    ov_copying,
    ov_copying_all,
    path_expansion,
    qk_circuit,
    qk_positional_terms,
)
from qkov.composition import composition_score, composition_scores
from qkov.config import ModelConfig
from qkov.errors import QkovError
from qkov.factored import FactoredMatrix
from qkov.heads import classify_heads, head_scores, training_probe
from qkov.model import AttnOnlyTransformer
from qkov.trigrams import factoring_bugs, skip_trigrams

__version__ = "0.1.0"

__all__ = [
    "FactoredMatrix",
    "W_OV",
    "W_QK",
    "composition_score",
    "composition_scores",
    "direct_path",
    "factoring_bugs",
    "ov_circuit",
    "ov_copying",
    "ov_copying_all",
    "path_expansion",
    "qk_circuit",
    "qk_positional_terms",
    "skip_trigrams",
    "AttnOnlyTransformer",
    "ModelConfig",
    "QkovError",
    "__version__",
    "classify_heads",
    "head_scores",
    "icl_score",
    "load",
    "save_model",
    "term_importance",
    "training_probe",
]
