"""qkov: reverse-engineer attention-only transformers (Elhage et al., 2021)."""

from qkov.ablation import icl_score, term_importance
from qkov.checkpoint import load, save_model
from qkov.config import ModelConfig
from qkov.errors import QkovError
from qkov.heads import classify_heads, head_scores, training_probe
from qkov.model import AttnOnlyTransformer

__version__ = "0.1.0"

__all__ = [
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
