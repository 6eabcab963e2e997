"""SIGINT / SIGTERM during training: a final checkpoint at the next step boundary, or, when
the step in progress will not end soon, an immediate exit.

A Python signal handler runs only between bytecodes of the main thread, so a step blocked
in one long torch op (minutes, for a big configuration) would ignore the signal. Here the
signal number is also written to a pipe by the C-level handler (`signal.set_wakeup_fd`),
and a watchdog thread reading it exits the process with status 128 + signum (`os._exit`)
on a second signal, or when the loop has not reached a step boundary within the grace
period. That is safe: every checkpoint write is atomic (qkov.io), and `--resume` removes
the temp file of a write the exit cut short.

Inside a Jupyter kernel (ipykernel imported) there is no watchdog: exiting would kill the
kernel and the notebook's state with it. There a second signal raises KeyboardInterrupt at
once, as Python does by default, and a long step ends before the run stops."""

from __future__ import annotations

import os
import select
import signal
import sys
import threading
import time
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)
GRACE_S = 5.0  # the least time the step in progress is given to end
MAX_GRACE_S = 60.0  # the most: twice the slowest step so far, within [GRACE_S, MAX_GRACE_S]
# Signals within this time of the first are the same request: a launcher may signal the
# process group and the process itself. A person's second Ctrl-C comes later than this.
SAME_REQUEST_S = 0.25


def least_grace_s() -> float:
    """GRACE_S, or $QKOV_STOP_GRACE_S when it is a positive number (a run that must stop
    faster, and the test that checks the watchdog on a machine of any speed)."""
    try:
        value = float(os.environ.get("QKOV_STOP_GRACE_S", ""))
    except ValueError:
        return GRACE_S
    return value if 0 < value < MAX_GRACE_S else GRACE_S


class TrainingInterrupted(KeyboardInterrupt):
    """Raised after the checkpoint a SIGINT or SIGTERM asked for; `signum` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class StopRequest:
    """Context manager: SIGINT/SIGTERM set `requested`; the loop calls `boundary()` after
    each step and `acknowledge()` once it has started its final checkpoint. Without the
    acknowledgement within the grace period, or on a second signal, the process exits.
    Outside the main thread signals are left alone."""

    def __init__(self, run_dir: str = "the run directory") -> None:
        self.run_dir = run_dir
        self.signum: int | None = None
        self._acknowledged = threading.Event()
        self._slowest_step_s = 0.0
        self._t_boundary: float | None = None
        self._old: dict[int, Any] = {}
        self._pipe: tuple[int, int] | None = None
        self._old_wakeup = -1
        self._thread: threading.Thread | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def boundary(self) -> None:
        """A step boundary (the first call: the loop starts). Remembers the slowest step,
        which the grace period follows."""
        now = time.monotonic()
        if self._t_boundary is not None:
            self._slowest_step_s = max(self._slowest_step_s, now - self._t_boundary)
        self._t_boundary = now

    def acknowledge(self) -> None:
        """The loop is writing its final checkpoint: the watchdog stands down."""
        self._acknowledged.set()

    def grace_s(self) -> float:
        return min(MAX_GRACE_S, max(least_grace_s(), 2 * self._slowest_step_s))

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is not threading.main_thread():
            return self
        if "ipykernel" in sys.modules:  # no os._exit in a notebook's kernel
            for s in SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
            return self
        r, w = os.pipe()
        os.set_blocking(w, False)  # set_wakeup_fd needs a non-blocking write end
        self._pipe = (r, w)
        for s in SIGNALS:
            self._old[s] = signal.signal(s, self._handle)
        self._old_wakeup = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        self._thread = threading.Thread(target=self._watch, args=(r,), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._pipe is None:  # no watchdog: only the handlers to restore
            for s, h in self._old.items():
                signal.signal(s, h)
            return
        signal.set_wakeup_fd(self._old_wakeup)
        for s, h in self._old.items():
            signal.signal(s, h)
        r, w = self._pipe
        os.close(w)  # the watchdog reads end-of-file and returns
        if self._thread is not None:
            # No timeout: closing r under a watchdog still reading it would let a file opened
            # later reuse the number, and the watchdog read that file's bytes as signals.
            self._thread.join()
        os.close(r)
        self._pipe = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            self.signum = signum
        elif self._pipe is None:  # no watchdog (a notebook): a second signal stops now
            raise KeyboardInterrupt
        # with a watchdog, a second signal is the watchdog's to act on

    def _watch(self, r: int) -> None:
        """Read signal numbers from the wakeup pipe; exit when the loop does not stop."""
        first, grace = signal.SIGTERM, 0.0
        deadline: float | None = None
        t_first: float | None = None  # when the first request arrived
        while True:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([r], [], [], timeout)
            if not ready:  # the grace period is over
                if self._acknowledged.is_set():
                    deadline = None
                    continue
                self._exit(first, f"the step in progress did not end within {grace:.0f}s")
            data = os.read(r, 64)
            if not data:  # the write end closed: training is over
                return
            now = time.monotonic()
            for signum in data:
                if signum not in SIGNALS:
                    continue
                if t_first is not None:  # this thread has seen a request before
                    if now - t_first < SAME_REQUEST_S:
                        continue  # the same request delivered twice, not a second one
                    self._exit(signum, f"a second {signal.Signals(signum).name}")
                # The first request. On a loaded machine this thread may read it only after
                # the loop has already acknowledged it: that is still the first, not a second.
                first, grace, t_first = signum, self.grace_s(), now
                deadline = None if self._acknowledged.is_set() else now + grace

    def _exit(self, signum: int, why: str) -> None:
        msg = (
            f"qkov train: stopped by {signal.Signals(signum).name} ({why}) without a final "
            f"checkpoint; the last checkpoint in {self.run_dir} is kept: continue with --resume\n"
        )
        os.write(2, msg.encode("utf-8", "replace"))
        os._exit(128 + signum)
