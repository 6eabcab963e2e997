"""Corpora, tokenizer training and token streams (cached on disk), synthetic tasks."""

from qkov.data.corpus import Corpus, Document, load_corpus, stdlib_files
from qkov.data.dataset import (
    TokenStream,
    default_cache_dir,
    prepare,
)
from qkov.data.synthetic import InductionTask, RepeatedRandom
from qkov.data.tokenizer import EOT, decode_token, train_tokenizer

__all__ = [
    "EOT",
    "Corpus",
    "Document",
    "InductionTask",
    "RepeatedRandom",
    "TokenStream",
    "decode_token",
    "default_cache_dir",
    "load_corpus",
    "prepare",
    "stdlib_files",
    "train_tokenizer",
]
