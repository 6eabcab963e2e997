"""qkov.interrupt in a notebook kernel: no watchdog (it would kill the kernel); a second
signal raises KeyboardInterrupt instead. The watchdog's reading of its pipe: one request is
one request however late it is read, a later one stops the run. (Whole runs:
tests/test_crash_safety.py.)"""

import os
import signal
import sys
import threading
import types

import pytest

from qkov.interrupt import StopRequest


def test_no_watchdog_in_a_notebook_kernel(monkeypatch):
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    before = signal.getsignal(signal.SIGINT)
    threads = threading.active_count()
    with pytest.raises(KeyboardInterrupt):
        with StopRequest("run") as stop:
            assert threading.active_count() == threads  # no watchdog thread
            os.kill(os.getpid(), signal.SIGINT)
            assert stop.requested and stop.signum == signal.SIGINT  # first: a request
            os.kill(os.getpid(), signal.SIGINT)  # second: stop now
            pytest.fail("the second SIGINT did not interrupt")
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored


CHILD = """
import time
from qkov.interrupt import StopRequest
with StopRequest("x") as stop:
    print("ready", flush=True)
    while not stop.requested:
        time.sleep(0.01)
    time.sleep(1.5)  # a slow final step: the watchdog's grace (5 s) has not run out
print("clean exit", flush=True)
"""


@pytest.mark.parametrize("gap_s, code", [(0.01, 0), (0.6, 128 + signal.SIGTERM)])
def test_a_repeated_signal_is_the_same_request_a_later_one_stops_now(gap_s, code):
    """Two SIGTERMs within SAME_REQUEST_S are one request (the run ends cleanly); a second one
    later makes the watchdog exit at once with 128 + signum."""
    import subprocess
    import time

    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    time.sleep(gap_s)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, (out, err)
    if code:
        assert "stopped by SIGTERM (a second SIGTERM)" in err
    else:
        assert "clean exit" in out and err == ""


class _Exited(Exception):
    pass


def _watch_bytes(monkeypatch, acknowledged: bool, gaps: list[float]) -> list[str]:
    """Run the watchdog's loop on a pipe holding SIGTERM bytes written `gaps` seconds apart
    (the first at once); returns the reasons it exited with (none: it read to the end)."""
    import time

    stop = StopRequest("run")
    if acknowledged:
        stop.acknowledge()
    exits: list[str] = []

    def record(signum, why):
        exits.append(why)
        raise _Exited

    monkeypatch.setattr(stop, "_exit", record)
    r, w = os.pipe()

    def write() -> None:
        for gap in gaps:
            time.sleep(gap)
            os.write(w, bytes([signal.SIGTERM]))
        os.close(w)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        stop._watch(r)
    except _Exited:
        pass
    writer.join()
    os.close(r)
    return exits


def test_a_lone_signal_read_after_the_loop_acknowledged_it_is_not_a_second(monkeypatch):
    """A loaded machine can run the loop's acknowledgement before the watchdog thread reads
    the signal's byte: that byte is still the first request (once seen as a second one, it
    ended a run without its final checkpoint)."""
    assert _watch_bytes(monkeypatch, acknowledged=True, gaps=[0.0]) == []


def test_a_later_signal_after_acknowledgement_stops_at_once(monkeypatch):
    assert _watch_bytes(monkeypatch, acknowledged=True, gaps=[0.0, 0.4]) == ["a second SIGTERM"]
