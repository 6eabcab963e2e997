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
