"""One writer per run directory: an exclusive flock on the directory, held for a whole run.

Two `qkov train --out same` (or a `--resume` of a run another process is training) would
interleave their checkpoints and metrics; the second is refused instead. The lock is on
the directory's own file descriptor, so taking it writes no file, and the kernel drops it
when the process ends however it ends (a SIGKILL leaves no stale lock)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from qkov.errors import QkovError


class RunLock:
    """An exclusive, non-blocking flock on `path` (a directory), taken by `acquire`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, create: bool = False) -> None:
        """Lock the directory, or refuse with the pid that holds it. Without `create` a
        directory that does not exist yet is left alone (the lock is taken once it is made)."""
        if self.held:
            return
        if create:
            self.path.mkdir(parents=True, exist_ok=True)
        elif not self.path.is_dir():
            return
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder_pid(os.fstat(fd).st_ino)
            os.close(fd)
            who = f"process {holder}" if holder is not None else "another process"
            raise QkovError(
                f"{self.path} is being written by {who} (another qkov train): wait for it to "
                "finish or stop it, or choose another --out"
            ) from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def writer_pid(path: str | Path) -> int | None:
    """The pid of the process training into run directory `path` now (holding its lock),
    or None: read from /proc/locks, without touching the lock (Linux; elsewhere None)."""
    try:
        return _holder_pid(os.stat(path).st_ino)
    except OSError:
        return None


def _holder_pid(ino: int) -> int | None:
    """The pid holding a flock on the file of inode `ino`, from /proc/locks (Linux), or
    None."""
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    # "1: FLOCK  ADVISORY  WRITE 4242 00:2f:131090 0 EOF": pid, then major:minor:inode.
    pids = set()
    for line in lines:
        parts = line.split()
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5].endswith(f":{ino}"):
            pids.add(int(parts[4]))
    return pids.pop() if len(pids) == 1 else None
