"""Load test of `qkov explore` (bounded, 127.0.0.1 only): a server started as its own
process on the shipped models, then C concurrent clients each sending N `POST /api/run`
requests of T-token texts (different stdlib source for every request). Prints the errors
(must be none), the median and p95 latency, the throughput, and the server's resident
memory before the load (after one warm-up request per model) and after it.

    python benchmarks/explore_load.py [--clients 8] [--requests 50] [--tokens 200]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HOST = "127.0.0.1"


def rss_mib(pid: int) -> float:
    """Resident set size of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def texts(n: int, tokens: int) -> list[str]:
    """n texts of exactly `tokens` tokens (attn2's tokenizer), cut from stdlib sources."""
    import inspect

    import qkov

    tok = qkov.load(qkov.shipped("attn2")).tokenizer
    src = "".join(
        Path(inspect.getfile(m)).read_text()
        for m in (json.decoder, json.encoder, http.client, statistics, threading)
    )
    ids = tok.encode(src).ids
    out, start = [], 0
    while len(out) < n:
        text = tok.decode(ids[start : start + tokens])
        if len(tok.encode(text).ids) == tokens:  # a cut can merge differently: skip it
            out.append(text)
        start = (start + 97) % (len(ids) - tokens)
    return out


def post(port: int, body: bytes) -> tuple[int, float]:
    t = time.perf_counter()
    conn = http.client.HTTPConnection(HOST, port, timeout=300)
    try:
        conn.request("POST", "/api/run", body, {"Content-Type": "application/json"})
        r = conn.getresponse()
        data = r.read()
        if r.status == 200:
            json.loads(data)  # a whole, valid answer
        return r.status, time.perf_counter() - t
    finally:
        conn.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=50, help="per client")
    ap.add_argument("--tokens", type=int, default=200)
    args = ap.parse_args()

    port = free_port()
    env = dict(os.environ)
    server = subprocess.Popen(
        [sys.executable, "-m", "qkov", "explore", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                http.client.HTTPConnection(HOST, port, timeout=5).request("GET", "/api/models")
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    sys.exit(f"server did not start: {server.stderr.read().decode()}")
                time.sleep(0.2)
        bodies = [
            json.dumps({"model": m, "text": t}).encode()
            for m, t in zip(
                ["attn2", "mlp2"] * (args.clients * args.requests),
                texts(args.clients * args.requests, args.tokens),
                strict=False,
            )
        ]
        for m in ("attn2", "mlp2"):  # warm-up: first calls allocate
            post(port, json.dumps({"model": m, "text": "def f(x):\n    return x\n"}).encode())
        before = rss_mib(server.pid)

        results: list[tuple[int, float]] = []
        lock = threading.Lock()

        def client(c: int) -> None:
            for r in range(args.requests):
                got = post(port, bodies[c * args.requests + r])
                with lock:
                    results.append(got)

        t0 = time.perf_counter()
        threads = [threading.Thread(target=client, args=(c,)) for c in range(args.clients)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        wall = time.perf_counter() - t0
        after = rss_mib(server.pid)
        alive = server.poll() is None
    finally:
        server.terminate()
        server.wait(timeout=60)

    errors = [s for s, _ in results if s != 200]
    lat = sorted(t for _, t in results)
    p95 = lat[min(len(lat) - 1, int(round(0.95 * len(lat))) - 1)]
    print(
        f"qkov explore load test: {args.clients} clients x {args.requests} requests of "
        f"{args.tokens}-token texts (attn2 and mlp2 alternating), 127.0.0.1:{port}, "
        f"{os.cpu_count()} CPUs"
    )
    print(f"  requests {len(results)}, errors {len(errors)}, server alive after: {alive}")
    print(
        f"  latency median {statistics.median(lat) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, "
        f"max {lat[-1] * 1000:.0f} ms; throughput {len(results) / wall:.1f} requests/s "
        f"({wall:.1f} s)"
    )
    print(f"  server RSS before {before:.0f} MiB, after {after:.0f} MiB")
    return 0 if not errors and alive and len(results) == args.clients * args.requests else 1


if __name__ == "__main__":
    sys.exit(main())
