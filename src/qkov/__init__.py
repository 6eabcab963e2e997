"""qkov: reverse-engineer attention-only transformers (Elhage et al., 2021)."""

from qkov.checkpoint import load, save_model
from qkov.config import ModelConfig
from qkov.errors import QkovError
from qkov.model import AttnOnlyTransformer

__version__ = "0.1.0"

__all__ = ["AttnOnlyTransformer", "ModelConfig", "QkovError", "__version__", "load", "save_model"]
