"""A real `qkov explore` server (uvicorn, 127.0.0.1, a free port) in a thread, for the
explore tests, the browser test and the load benchmark's checks."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(explorer) -> Iterator[str]:
    """Serve `explorer` on 127.0.0.1; yields the base URL, stops the server on exit."""
    import uvicorn

    from qkov.explore.app import create_app

    port = free_port()
    config = uvicorn.Config(
        create_app(explorer), host="127.0.0.1", port=port, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:  # bounded wait for the socket, not a timing assertion
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the explore server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def raw_get(base: str, path: str) -> tuple[int, bytes]:
    """GET `path` sent exactly as written (no client-side normalisation of '..')."""
    import http.client
    from urllib.parse import urlsplit

    u = urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()
