"""Command-line flags made from a config dataclass's fields, so each default lives only in
the dataclass (STYLE: "the same names on the CLI").

    add_dataclass_flags(group, ModelConfig, help={"n_ctx": "context length"})
    ModelConfig(**dataclass_values(args, ModelConfig))
    given_flags(args, ModelConfig)   # {"d_model": "--d-model"}: the flags the line gave

Field `d_model` becomes `--d-model` (dest `d_model`), typed from its annotation (int,
float, str, or one of them | None; a bool field defaulting to False is a switch, `--bias`)
with the field's default, which the CLI's help formatter
(qkov.cli.HelpFormatter) shows as "(default: ...)". A field whose default is None has no
value to show: its help text says what None means, e.g. "(default: d_model / n_heads)"."""

from __future__ import annotations

import argparse
import dataclasses
import re
import types
import typing
from collections.abc import Collection, Mapping
from typing import Any

_TYPES = (int, float, str, bool)
_GIVEN = "_given_flags"  # the namespace attribute that lists the flags given on the line


def _record(action: argparse.Action, namespace: argparse.Namespace) -> None:
    given = dict(getattr(namespace, _GIVEN, None) or {})
    given[action.dest] = action.option_strings[0]
    setattr(namespace, _GIVEN, given)


class _Store(argparse._StoreAction):
    def __call__(self, parser, namespace, values, option_string=None):  # type: ignore[override]
        super().__call__(parser, namespace, values, option_string)
        _record(self, namespace)


class _Switch(argparse._StoreTrueAction):
    def __call__(self, parser, namespace, values, option_string=None):  # type: ignore[override]
        super().__call__(parser, namespace, values, option_string)
        _record(self, namespace)


def given_flags(args: argparse.Namespace, cls: type | None = None) -> dict[str, str]:
    """{field: flag} of the flags `add_dataclass_flags` added that the command line gave
    (even at their default value), of dataclass `cls`'s fields only when given."""
    given = getattr(args, _GIVEN, None) or {}
    if cls is None:
        return dict(given)
    fields = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in given.items() if k in fields}


def _flag_type(cls: type, name: str) -> type:
    """int, float or str from an annotation such as `int`, `float | None`."""
    hint = typing.get_type_hints(cls)[name]
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    kinds = [a for a in args if a is not type(None)]
    if len(kinds) != 1 or kinds[0] not in _TYPES:
        raise TypeError(f"{cls.__name__}.{name}: a flag needs an int, float, str or bool field")
    return kinds[0]


def add_dataclass_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    help: Mapping[str, str] | None = None,
    flags: Mapping[str, str] | None = None,
    choices: Mapping[str, Collection[str]] | None = None,
    skip: Collection[str] = (),
) -> None:
    """Add one `--field-name` flag per field of dataclass `cls` (except `skip`).

    help: text per field; flags: another flag name for a field (`{"d_vocab": "--vocab-size"}`;
    the value still lands in `args.d_vocab`); choices: the allowed values of a field."""
    help, flags, choices = help or {}, flags or {}, choices or {}
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        default = field.default
        if default is dataclasses.MISSING:
            raise TypeError(f"{cls.__name__}.{field.name} has no default to give its flag")
        text = help.get(field.name, "").replace("%", "%%")
        flag = flags.get(field.name, "--" + field.name.replace("_", "-"))
        kind = _flag_type(cls, field.name)
        if kind is bool:
            if default is not False:
                raise TypeError(f"{cls.__name__}.{field.name}: a switch must default to False")
            parser.add_argument(flag, dest=field.name, action=_Switch, help=text or None)
            continue
        parser.add_argument(
            flag,
            dest=field.name,
            action=_Store,
            metavar=None if field.name in choices else flag.lstrip("-").upper().replace("-", "_"),
            type=kind,
            default=default,
            choices=choices.get(field.name),
            help=text or None,
        )


def dataclass_values(
    args: argparse.Namespace, cls: type, skip: Collection[str] = ()
) -> dict[str, Any]:
    """{field: value} of the flags `add_dataclass_flags` added for `cls`: `cls(**values)`."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if f.name not in skip}


def add_token_filter_flags(parser: argparse.ArgumentParser) -> None:
    """--min-token-count / --all-tokens: which tokens skip-trigram tables rank over (see
    `qkov.trigrams.allowed_tokens`). Read them back with `min_token_count(args)`."""
    from qkov.names import MIN_TOKEN_COUNT

    parser.add_argument(
        "--min-token-count",
        type=int,
        default=MIN_TOKEN_COUNT,
        help="rank skip-trigrams only over tokens seen at least this often in training "
        "(token_counts.json of the run; without it, all tokens)",
    )
    parser.add_argument(
        "--all-tokens", action="store_true", help="rank skip-trigrams over every token"
    )


def min_token_count(args: argparse.Namespace) -> int | None:
    """The minimum count the flags ask for (None: every token), checked."""
    from qkov.errors import QkovError

    if args.min_token_count < 0:
        raise QkovError(f"--min-token-count must be >= 0, got {args.min_token_count}")
    return None if args.all_tokens else args.min_token_count


def add_text_flags(parser: argparse.ArgumentParser, what: str, required: bool = False) -> None:
    """--text "..." (the text itself) or --text-file FILE (a file holding it), never both:
    each flag means the same in every command. `what`: what the command does with the text.
    Read them back with `given_text(args)`."""
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("--text", default=None, help=f"the text itself: {what}")
    group.add_argument("--text-file", default=None, help=f"a file holding the text: {what}")


def given_text(args: argparse.Namespace) -> tuple[str, str] | None:
    """(the text, its name) from --text-file (read) or --text, or None for neither. An
    unreadable, empty or blank text is one line; so is a --text that names a file (--text is
    the text itself: `--text notes.txt` would read the 9 characters "notes.txt")."""
    from pathlib import Path

    from qkov.errors import QkovError

    if args.text_file is not None:
        return read_text_file(args.text_file), args.text_file
    if args.text is None:
        return None
    if not args.text.strip():
        raise QkovError("--text is empty: give the text itself (or --text-file FILE)")
    try:
        a_file = "\n" not in args.text and Path(args.text).is_file()
    except (OSError, ValueError):  # a name too long for the filesystem, a NUL
        a_file = False
    if a_file:
        raise QkovError(
            f"--text is the text itself, and {args.text!r} is a file: to read it, give "
            f"--text-file {args.text}"
        )
    return args.text, "the text given with --text"


def read_text_file(path: str) -> str:
    """The text of the file given as --text-file; an unreadable or empty file is refused
    with one line (never replaced by a default)."""
    from pathlib import Path

    from qkov.errors import QkovError

    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise QkovError(f"cannot read --text-file {path} ({e})") from None
    if not text.strip():
        raise QkovError(f"--text-file {path} is empty: pass a file with some text in it")
    return text


def add_download_flag(parser: argparse.ArgumentParser) -> None:
    """--download: the DIR arguments are Hugging Face hub repository ids to fetch first
    (`qkov.hf.download`). Read them back with `model_dirs(args, dirs)`."""
    parser.add_argument(
        "--download",
        action="store_true",
        help="DIR is a Hugging Face hub repository id (e.g. gpt2, EleutherAI/pythia-70m): "
        "fetch its config.json, safetensors and tokenizer.json into the hub cache first "
        "(needs huggingface_hub and the network; nothing else in qkov uses either)",
    )


def model_dirs(args: argparse.Namespace, dirs: list[str]) -> list[str]:
    """The checkpoint folders to load: `dirs` as given, or with --download each hub id
    fetched (call it after every other input check: downloading is the slow part)."""
    if not getattr(args, "download", False):
        return list(dirs)
    from qkov.hf import download

    return [str(download(d)) for d in dirs]


def parse_head(name: str, flag: str) -> tuple[int, int]:
    """A head named as everywhere in qkov, "L1H5", as (1, 5); else one QkovError line."""
    from qkov.errors import QkovError

    m = re.fullmatch(r"L(\d+)H(\d+)", name.strip())
    if m is None:
        raise QkovError(
            f"{flag}: {name.strip()!r} is not a head: write it as L1H5 (layer 1, head 5)"
        )
    return int(m[1]), int(m[2])
