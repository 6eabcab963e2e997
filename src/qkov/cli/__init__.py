"""The `qkov` command line: thin wrappers that parse, call the library, and print.

Each subcommand lives in its own module here with `register(subparsers)`; it sets
`func` on its parser. A QkovError becomes one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import copy
import importlib
import os
import sys

# Subcommand modules in the order `qkov --help` lists them.
COMMANDS = [
    "demo",
    "train",
    "sample",
    "info",
    "analyze",
    "report",
    "circuits",
    "heads",
    "forming",
    "attribute",
    "explore",
]


def plural(n: int, word: str, many: str | None = None) -> str:
    """'1 layer', '2 layers', '0 layers' (`many` for an irregular plural)."""
    return f"{n:,} {word if n == 1 else many or word + 's'}"


class HelpFormatter(argparse.HelpFormatter):
    """Help that ends each option with its default, unless the text already names one
    (flags and options whose default is None have none to show)."""

    @staticmethod
    def _shows_default(action: argparse.Action) -> bool:
        d = action.default
        return bool(action.option_strings) and not (
            d is None or d is argparse.SUPPRESS or isinstance(d, bool)
        )

    @staticmethod
    def _default(action: argparse.Action) -> str:
        # repr for text, so a default prompt "def " shows its trailing space
        return "%(default)r" if isinstance(action.default, str) else "%(default)s"

    def _format_action(self, action: argparse.Action) -> str:
        if not action.help and self._shows_default(action):
            action = copy.copy(action)  # an option without help text still shows its default
            action.help = "default: " + self._default(action)
        return super()._format_action(action)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if self._shows_default(action) and "default" not in text:
            text += f" (default: {self._default(action)})"
        return text


def one_line(text: str) -> str:
    """`text` with "\\n", "\\r" and other unprintable characters escaped: an error message
    that quotes a path, prompt or argument stays one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class Parser(argparse.ArgumentParser):
    """argparse, with its one error line kept one line whatever argument it quotes."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {one_line(message)}\n")


class CommandParser(Parser):
    """The parser of one subcommand: its help shows defaults, and a mistake in its
    arguments prints its own usage (not `qkov`'s) and one error line, exit status 2."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(**kwargs)

    def parse_known_args(self, args=None, namespace=None):
        # The top-level parser collects what a subcommand did not recognise and reports it
        # under the top-level usage; refuse it here, under this command's usage, instead.
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras


def build_parser() -> argparse.ArgumentParser:
    from qkov import __version__

    parser = Parser(
        prog="qkov",
        description=(
            "Reverse-engineer transformers into circuits: train small ones or read GPT-2, Pythia "
            "and Llama-style checkpoints from local folders; take them apart, report, explore."
        ),
    )
    parser.add_argument("--version", action="version", version=f"qkov {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=CommandParser)
    for name in COMMANDS:
        importlib.import_module(f"qkov.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from qkov.errors import QkovError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except QkovError as e:
        print(f"qkov {args.command}: error: {one_line(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"qkov {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of stdout went away (`qkov sample ... | head`): stop quietly, and keep
        # Python's flush at exit from raising again; 128 + SIGPIPE, as `yes | head` gives.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
