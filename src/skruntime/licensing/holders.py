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
import weakref
from pathlib import Path

from .identity import fcntl

_PREFIX = ".holder_"

_LOOK = os.O_RDONLY | os.O_NONBLOCK
"""How a look opens another runtime's lock file: not waiting on a FIFO put in its place."""


def _path(state_dir: Path, token: str) -> Path:
    return state_dir / f"{_PREFIX}{token}.lock"


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd``: a sweep (:func:`sweep`) may have
    removed it between its creation and its lock, and a lock on a removed file tells nobody
    that its runtime runs."""
    try:
        named = os.stat(path)
    except OSError:
        return False
    opened = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


_HOLDERS: weakref.WeakSet[Holder] = weakref.WeakSet()


def _forked() -> None:
    """In a forked child: let go of the parent's lock files without removing them. The child
    shares the parent's open file, so it kept the lock held for a parent killed since (its
    reservation then never counted as run while the child lived), and its close() removed the
    parent's lock file (the parent then seen ended while it runs)."""
    for holder in list(_HOLDERS):
        if holder._fd is not None:
            with contextlib.suppress(OSError):
                os.close(holder._fd)
            holder._fd = None
        holder.token = os.urandom(8).hex()


if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=_forked)


class Holder:
    """This runtime's lock file, taken at its first reservation and kept until :meth:`let_go`.
    Take and check it under the counter file's lock, so that no check falls between a lock
    file's creation and its lock."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.token = os.urandom(8).hex()
        self._fd: int | None = None
        _HOLDERS.add(self)

    def hold(self) -> bool:
        """Take the lock (once); False where it cannot be taken (no ``fcntl``, a folder that
        takes no new file): the reservations then count as run when others report."""
        if self._fd is not None:
            return True
        if fcntl is None:  # pragma: no cover - Windows
            return False
        path = _path(self.state_dir, self.token)
        for _ in range(3):  # a sweep removed the file before it was locked: create it again
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            except OSError:
                return False
            try:
                # waits: only a look of another application's runtime (running(), sweep(),
                # not under this one's counter lock) holds it, for an instant
                fcntl.flock(fd, fcntl.LOCK_EX)
                if _same_file(fd, path):
                    self._fd = fd
                    return True
            except OSError:
                pass
            os.close(fd)
        return False

    def let_go(self) -> None:
        """Remove the lock file and release the lock (idempotent)."""
        if self._fd is None:
            return
        # a read-only folder now: the file stays, unlocked, and is swept later
        path = _path(self.state_dir, self.token)
        with contextlib.suppress(OSError):
            if _same_file(self._fd, path):
                path.unlink()
        os.close(self._fd)
        self._fd = None


def running(state_dir: Path, token: str) -> bool:
    """Whether the runtime of ``token`` still holds its lock (is running)."""
    if fcntl is None:  # pragma: no cover - Windows
        return False
    try:
        fd = os.open(_path(state_dir, token), _LOOK)
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
    """Remove the lock files of runtimes that ended without removing theirs (killed), each
    while holding its lock: a runtime of another application (under another counter lock)
    may have just created one and not locked it yet; it sees the file gone once it locks it,
    and creates it again (:meth:`Holder.hold`)."""
    if fcntl is None:  # pragma: no cover - Windows
        return
    for path in state_dir.glob(f"{_PREFIX}*.lock"):
        try:
            fd = os.open(path, _LOOK)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # running (or no telling): kept
            if _same_file(fd, path):
                try:
                    path.unlink()
                except OSError:
                    return  # a read-only folder: nothing to do
        finally:
            os.close(fd)
