"""Opening the files a user deploys (configuration, key files, model files) without hanging.

``open()`` of a named pipe (FIFO) blocks until a writer opens it, and a read of a character
device such as ``/dev/zero`` never ends: a key file or configuration replaced by one of them
(by mistake, or to hang a service) blocked the process for ever. Every reader of a deployed
file opens it with :func:`open_regular`, which refuses anything but a regular file before
reading a byte.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO

__all__ = ["KEY_FILE_MODE", "NotRegularFileError", "file_kind", "new_file_mode", "open_regular"]

#: the flags every open of a deployed file uses: a FIFO opens at once (no writer needed), a
#: terminal does not become the process's controlling terminal; O_NONBLOCK does nothing to
#: the reads of the regular files that are then all that is kept.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)


class NotRegularFileError(OSError):
    """A path that is a folder, FIFO, device or socket where a regular file is needed.

    ``kind`` names what it is (``"a named pipe (FIFO)"``); ``str()`` is ``"<path> is <kind>,
    not a regular file"``, for callers to follow with what to do."""

    def __init__(self, path: str | os.PathLike[str], kind: str) -> None:
        super().__init__(f"{os.fspath(path)} is {kind}, not a regular file")
        self.filename = os.fspath(path)
        self.kind = kind

    def __str__(self) -> str:  # OSError's would be "[Errno None] None: '<path>'"
        return str(self.args[0])


def file_kind(mode: int) -> str | None:
    """What a ``st_mode`` is when it is not a regular file (``"a folder"``, ...), else None."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


#: What :func:`path_kind` calls a symbolic link that leads back to itself (ELOOP).
LINK_LOOP = "a loop of symbolic links"


def path_kind(path: str | os.PathLike[str]) -> str | None:
    """What ``path`` is when something other than a regular file is there (:func:`file_kind`,
    symbolic links followed, :data:`LINK_LOOP` for links that never end), else None: a
    regular file, or nothing there (a loop was said not to exist)."""
    try:
        return file_kind(os.stat(path).st_mode)
    except OSError as err:
        return LINK_LOOP if err.errno == errno.ELOOP else None


def open_regular(path: str | os.PathLike[str]) -> BinaryIO:
    """Open ``path`` (symbolic links followed) for binary reading if it is a regular file.

    Checked twice: ``stat`` before opening, so that no device is even opened (opening one may
    act: a tape rewinds), and ``fstat`` of the open descriptor, so that a file swapped for a
    FIFO between the two is refused too, without blocking (the open is non-blocking).

    Raises:
        NotRegularFileError: a folder, FIFO, device or socket, or a loop of symbolic links
            (an ``OSError``; a loop's ELOOP read as a permission problem to the callers).
        OSError: what ``open`` raises (``FileNotFoundError``, ``PermissionError``, ...).
    """
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise NotRegularFileError(path, LINK_LOOP) from None
        raise
    if kind := file_kind(mode):
        raise NotRegularFileError(path, kind)
    fd = os.open(path, _OPEN_FLAGS)
    try:
        if kind := file_kind(os.fstat(fd).st_mode):
            raise NotRegularFileError(path, kind)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def loose_key_warning(
    subject: str, path: str | os.PathLike[str], mode: int, harm: str
) -> str | None:
    """What to say of a secret key file whose permission bits ``mode`` let other users read or
    change it (``subject``: what the file is; ``harm``: what whoever reads it can do), or None
    when it is its owner's alone, or off POSIX, whose files have no such bits. A warning, for
    the caller to print: secret volumes (Kubernetes') are 0644 by default."""
    mode = stat.S_IMODE(mode)
    if os.name != "posix" or not mode & 0o077:
        return None
    path = os.fspath(path)
    return (
        f"{subject} {path} is accessible to other users (mode {mode:o}); whoever reads it "
        f"{harm}: run `chmod 600 {path}`"
    )


def _umask() -> int:
    """The process's umask, read from ``/proc/self/status`` (Linux 4.7 and later) without
    changing it; elsewhere by setting and restoring it, which is what Python offers (another
    thread creating a file in between would get the umask 0 for that instant)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o077)
    os.umask(umask)
    return umask


def new_file_mode(mode: int = 0o666) -> int:
    """The permission bits that ``open()`` gives a new file created with ``mode``: ``mode``
    less the process's umask. For files written through a temporary file and renamed into
    place (created 0600, then given their mode): chmod ignores the umask, so a key file given a
    fixed 0644 stayed readable by every user under ``umask 077``."""
    return mode & ~_umask() & 0o7777


KEY_FILE_MODE = 0o644
"""The most a key file is given: the umask may take bits away, never add write for others (a
key file was 0666, writable by every user, under ``umask 0``)."""
