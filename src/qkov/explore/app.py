"""The explore web app: a Starlette application over an `Explorer`. It parses requests,
calls the explorer and answers JSON; the page is three bundled files (no CDN, no network).

    GET  /                      the page (assets/index.html)
    GET  /assets/<name>         explore.js, explore.css: looked up by name in a fixed table,
                                never joined to a filesystem path (so no traversal)
    GET  /api/models            the loaded models
    POST /api/run               {"model": optional, "text": "..."} -> tokens, patterns,
                                predictions, attributions
    GET  /api/heads?model=M     every head's role (classify_heads)
    GET  /api/head?model=M&layer=L&head=H   one head's panel

Every error is JSON {"error": "one line: what is wrong and how to mend it"} with a 4xx
status; the server stays up. A request whose client disconnects while it waits for the
compute thread is dropped from the queue, never computed (logged on "qkov.explore")."""

from __future__ import annotations

import asyncio
import json
import logging
import traceback
from concurrent.futures import ThreadPoolExecutor
from importlib.resources import files
from typing import Any

from qkov.errors import QkovError
from qkov.explore.session import Explorer, RequestError

log = logging.getLogger("qkov.explore")

MAX_BODY_BYTES = 64 * 1024  # a request body over this is refused (413) before it is parsed

ASSETS = {  # name -> media type: the only files the app serves
    "explore.js": "text/javascript; charset=utf-8",
    "explore.css": "text/css; charset=utf-8",
}
# The page loads only its own script and style and talks only to its own server.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _asset(name: str) -> bytes:
    return files("qkov.explore").joinpath("assets", name).read_bytes()


def create_app(explorer: Explorer):
    """The Starlette app serving `explorer` (assets are read once, here)."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    # All model compute on one worker thread: torch already uses every core, and one thread
    # keeps one malloc arena (a thread pool's many arenas each kept the freed tensors' pages:
    # RSS grew from 270 to 840 MiB under the load benchmark).
    compute = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qkov-explore")
    page = _asset("index.html")
    assets = {name: (_asset(name), media) for name, media in ASSETS.items()}

    def error(message: str, status: int) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=HEADERS)

    def answer(data: Any) -> Response:
        body = json.dumps(data, ensure_ascii=False, allow_nan=False).encode("utf-8")
        return Response(body, media_type="application/json", headers=HEADERS)

    async def call(request: Request, what: str, fn, *args) -> Response:
        try:
            explorer.check(what, *args)  # a bad request is refused before it queues
            job = compute.submit(fn, *args)
            result = asyncio.wrap_future(job)
            gone = asyncio.ensure_future(_disconnected(request))
            try:
                await asyncio.wait([result, gone], return_when=asyncio.FIRST_COMPLETED)
            finally:
                gone.cancel()
            # Client gone first: a job still queued is cancelled, so the compute thread skips
            # it (cancel() fails once the job runs, and that one finishes, answering no one).
            if not result.done() and job.cancel():
                log.info(
                    "%s %s not computed: its client disconnected while it queued",
                    request.method,
                    request.url.path,
                )
                return error("the client disconnected before its request was computed", 499)
            return answer(await result)
        except RequestError as e:
            return error(str(e), e.status)
        except QkovError as e:
            return error(str(e), 400)
        except Exception as e:  # a bug: JSON still (the page shows it), the trace in the log
            traceback.print_exc()
            line = (str(e).splitlines() or [""])[0][:200]
            return error(f"internal error ({type(e).__name__}: {line}): please report it", 500)

    async def index(request: Request) -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers=HEADERS)

    async def asset(request: Request) -> Response:
        found = assets.get(request.path_params["name"])
        if found is None:
            return error("no such file: the page's assets are explore.js and explore.css", 404)
        return Response(found[0], media_type=found[1], headers=HEADERS)

    async def models(request: Request) -> Response:
        return answer({"models": explorer.list()})

    async def run(request: Request) -> Response:
        body = await _read_body(request)
        if isinstance(body, Response):
            return body
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, ValueError) as e:
            return error(f'body is not valid JSON ({e}): send {{"text": "..."}}', 400)
        if not isinstance(data, dict):
            return error('body must be a JSON object: send {"text": "...", "model": "..."}', 400)
        unknown = sorted(set(data) - {"model", "text"})
        if unknown:
            return error(f"unknown field(s) {', '.join(unknown)}: send only model and text", 400)
        if "text" not in data:
            return error('missing "text": send {"text": "..."}', 400)
        return await call(request, "run", explorer.run, data.get("model"), data["text"])

    async def heads(request: Request) -> Response:
        return await call(request, "roles", explorer.roles, request.query_params.get("model"))

    async def progress(request: Request) -> Response:
        # answered here, on the event loop: never queued behind the compute it reports on
        try:
            return answer(explorer.progress(request.query_params.get("model")))
        except RequestError as e:
            return error(str(e), e.status)

    async def head(request: Request) -> Response:
        q = request.query_params
        return await call(
            request, "head", explorer.head, q.get("model"), q.get("layer"), q.get("head")
        )

    async def _read_body(request: Request) -> bytes | Response:
        """The body, or a 413 as soon as it passes MAX_BODY_BYTES (never read whole)."""
        length = request.headers.get("content-length")
        too_big = error(f"request body over {MAX_BODY_BYTES // 1024} KiB: send a shorter text", 413)
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return too_big if length.isdigit() else error("bad Content-Length header", 400)
        chunks, size = [], 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    return too_big
                chunks.append(chunk)
        except ClientDisconnect:  # gone mid-body: answer no one, log no traceback
            return error("the client disconnected before sending the whole body", 400)
        return b"".join(chunks)

    async def _disconnected(request: Request) -> None:
        """Returns once the client has gone: after the body, the server's next message is
        http.disconnect (uvicorn sends it when the socket closes, or after the response)."""
        while (await request.receive())["type"] != "http.disconnect":
            pass

    async def http_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 404:
            return error(f"not found: {request.url.path[:200]!r} (the page is at /)", 404)
        if exc.status_code == 405:
            return error(f"method {request.method} not allowed on {request.url.path[:200]}", 405)
        return error(str(exc.detail), exc.status_code)

    routes = [
        Route("/", index),
        Route("/assets/{name}", asset),
        Route("/api/models", models),
        Route("/api/run", run, methods=["POST"]),
        Route("/api/heads", heads),
        Route("/api/head", head),
        Route("/api/progress", progress),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: http_error})


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and "localhost": addresses no other machine can reach."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(explorer: Explorer, host: str = "127.0.0.1", port: int = 8765, log=print) -> None:
    """Serve until interrupted (uvicorn)."""
    import uvicorn

    log(f"qkov explore: {', '.join(explorer.models)} at http://{host}:{port}/ (Ctrl-C stops)")
    uvicorn.run(create_app(explorer), host=host, port=port, log_level="warning")
