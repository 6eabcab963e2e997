"""Progress lines of long work (`qkov analyze`, `qkov heads`): each stage as it starts, with
the seconds since the work began, and a count inside a long stage at most every PROGRESS_S
seconds (a 1B model's per-head stage takes minutes)."""

from __future__ import annotations

import time
from collections.abc import Callable

PROGRESS_S = 20.0  # seconds between the progress lines of one stage


class Stages:
    """`stage(what)` logs "  [12.3s] NAME: what"; `progress(done, total, what)` inside a
    long stage logs "  [..] NAME: 96 of 384 heads" at most once every PROGRESS_S seconds.
    log None: silent."""

    def __init__(self, name: str, log: Callable[[str], None] | None) -> None:
        self.name, self.log, self.t0 = name, log, time.perf_counter()
        self.last = self.t0

    def __call__(self, what: str) -> None:
        self.last = time.perf_counter()
        if self.log:
            self.log(f"  [{self.last - self.t0:.1f}s] {self.name}: {what}")

    def progress(self, done: int, total: int, what: str) -> None:
        if done < total and time.perf_counter() - self.last >= PROGRESS_S:
            self(f"{done} of {total} {what}")
