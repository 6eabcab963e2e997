"""The `qkov` command line: thin wrappers that parse, call the library, and print.

Each subcommand lives in its own module here with `register(subparsers)`; it sets
`func` on its parser. A QkovError becomes one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import importlib
import sys

# Subcommand modules in the order `qkov --help` lists them.
COMMANDS = ["demo", "train", "sample", "info", "analyze", "report", "circuits", "heads"]


def build_parser() -> argparse.ArgumentParser:
    from qkov import __version__

    parser = argparse.ArgumentParser(
        prog="qkov",
        description="Reverse-engineer attention-only transformers: train, take apart, report.",
    )
    parser.add_argument("--version", action="version", version=f"qkov {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
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
        # One line even when the message quotes a path or prompt holding "\n" or "\r".
        msg = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(e))
        print(f"qkov {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"qkov {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
