"""qkov.interrupt in a notebook kernel: no watchdog (it would kill the kernel); a second
signal raises KeyboardInterrupt instead. (The watchdog itself: tests/test_crash_safety.py.)"""

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
