"""Import and export checkpoints of peer libraries (optional extra: `pip install 'qkov[interop]'`).

Each peer lives in its own module and imports its library lazily, so `import qkov.interop`
works without any of them installed."""

from qkov.interop.transformer_lens import (
    Converted,
    convert_state_dict,
    from_hooked_transformer,
    from_pretrained,
    from_transformer_lens,
    load_transformer_lens,
    save_transformer_lens,
    to_hooked_transformer,
    to_transformer_lens,
)

__all__ = [
    "Converted",
    "convert_state_dict",
    "from_hooked_transformer",
    "from_pretrained",
    "from_transformer_lens",
    "load_transformer_lens",
    "save_transformer_lens",
    "to_hooked_transformer",
    "to_transformer_lens",
]
