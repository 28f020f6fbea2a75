"""Which runtimes sharing a state folder are still running, for the inferences they reserved.

A runtime reserves inferences in the counter file by blocks and uses them without writing the
file again; the file notes, per licence, how many of its reservation each runtime had left at
its last write (``held``). A usage report counts everything reserved but what running runtimes
still hold: what a runtime that ended without giving its reservation back (killed) held counts
as run, since nobody knows how much of it ran. Whether a runtime runs is whether it still holds
the advisory lock on its own lock file, ``.holder_<token>.lock`` in the state folder: the system
releases it when the process ends, however it ends. Without ``fcntl`` (Windows) no runtime can
be seen running, and every reservation counts as run, as before 2026-12-07.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from .identity import fcntl

_PREFIX = ".holder_"


def _path(state_dir: Path, token: str) -> Path:
    return state_dir / f"{_PREFIX}{token}.lock"


class Holder:
    """This runtime's lock file, taken at its first reservation and kept until :meth:`let_go`.
    Take and check it under the counter file's lock, so that no check falls between a lock
    file's creation and its lock."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.token = os.urandom(8).hex()
        self._fd: int | None = None

    def hold(self) -> bool:
        """Take the lock (once); False where it cannot be taken (no ``fcntl``, a folder that
        takes no new file): the reservations then count as run when others report."""
        if self._fd is not None:
            return True
        if fcntl is None:  # pragma: no cover - Windows
            return False
        try:
            fd = os.open(_path(self.state_dir, self.token), os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def let_go(self) -> None:
        """Remove the lock file and release the lock (idempotent)."""
        if self._fd is None:
            return
        # a read-only folder now: the file stays, unlocked, and is swept later
        with contextlib.suppress(OSError):
            _path(self.state_dir, self.token).unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None


def running(state_dir: Path, token: str) -> bool:
    """Whether the runtime of ``token`` still holds its lock (is running)."""
    if fcntl is None:  # pragma: no cover - Windows
        return False
    try:
        fd = os.open(_path(state_dir, token), os.O_RDONLY)
    except OSError:
        return False  # never created, or removed: not holding anything
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # releases the lock if it was taken here
    return False


def sweep(state_dir: Path) -> None:
    """Remove the lock files of runtimes that ended without removing theirs (killed)."""
    for path in state_dir.glob(f"{_PREFIX}*.lock"):
        if not running(state_dir, path.name[len(_PREFIX) : -len(".lock")]):
            try:
                path.unlink(missing_ok=True)
            except OSError:
                return  # a read-only folder: nothing to do
