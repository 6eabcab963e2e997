"""`qkov explore [DIR ...]`: a local web app to read any text through the models."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "explore",
        help="read any text through the models in the browser (local web app)",
        description="Serve a local page: type a text, see its tokens, every head's attention "
        "pattern, the model's predictions and the paths pushing each next token, and each "
        "head's role, eigenvalues and skip-trigrams. With no DIR it opens the shipped demo "
        "models. The JSON API behind it is in the README (POST /api/run).",
    )
    p.add_argument("dirs", nargs="*", metavar="DIR", help="checkpoint directories")
    p.add_argument("--port", type=int, default=8765, help="TCP port")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind; anything but a loopback address lets other machines in",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from qkov.errors import QkovError

    if not 0 < args.port < 65536:
        raise QkovError(f"--port {args.port} is not a TCP port: use 1-65535 (default 8765)")
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise QkovError(
            "qkov explore needs starlette and uvicorn: pip install 'qkov[explore]'"
        ) from None
    from qkov.explore.app import is_loopback, serve
    from qkov.explore.session import Explorer

    if not is_loopback(args.host):
        print(
            f"qkov explore: warning: --host {args.host} is not a loopback address: any machine "
            "that can reach it can use this server (it has no authentication)",
            file=sys.stderr,
        )
    _check_port(args.host, args.port)

    def say(line: str) -> None:
        print(f"qkov explore: {line}", file=sys.stderr, flush=True)

    explorer = Explorer.from_dirs(args.dirs, log=say)
    serve(explorer, args.host, args.port)
    return 0


def _check_port(host: str, port: int) -> None:
    """Refuse, before loading anything, an address this process cannot bind."""
    import socket

    from qkov.errors import QkovError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
        msg = f"--host {host}: {e.strerror or e}: give an address such as 127.0.0.1"
        raise QkovError(msg) from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            raise QkovError(
                f"cannot listen on {host}:{port} ({e.strerror or e}): is another server using "
                "it? choose another --port"
            ) from None
