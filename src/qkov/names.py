"""The words of qkov's vocabulary that are data (head scores and head labels, spelt the same
in code, CLI, analysis.json and the report; see docs/DESIGN.md) and the defaults the CLI
shows before it imports torch. Imports nothing."""

# The detector scores of `qkov.heads.head_scores`, in the order tables show them.
SCORE_NAMES = (
    "previous_token",
    "induction",
    "prefix_matching",
    "duplicate_token",
    "copying",
    "positional",
)
# A head's label: the name of the score that decided it, or "other".
LABELS = ("previous_token", "induction", "duplicate_token", "copying", "positional", "other")
# Skip-trigram tables rank only tokens seen at least this often in training (the default of
# `qkov analyze` and `qkov circuits`; see qkov.trigrams.allowed_tokens). At 10 the shipped
# models' tables were still topped by byte tokens of non-ASCII text seen 10-100 times in
# 10M training tokens; at 100 (1,883 of 2,048 tokens kept) far fewer are.
MIN_TOKEN_COUNT = 100
