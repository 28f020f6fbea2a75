"""What the runtime asks of the system it runs on: a tag naming it, for folders that a later
run may sweep, and a process that writes no core dump while it holds a key."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import hashlib
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

try:
    import resource
except ImportError:  # pragma: no cover (Windows: no core dumps to turn off)
    resource = None  # type: ignore[assignment]

__all__ = [
    "ThisSystem",
    "core_dumps_disabled",
    "disable_core_dumps",
    "last_change",
    "system_tag",
    "this_system",
]

_HOST_DIGITS = 12
"""A tag's first hex digits name the host, the remaining 4 its boot (:func:`system_tag`). Only
two hosts alike in these 48 bits sweep each other's folders; two boots alike in the last 16
only have an earlier boot's folder judged by its lock as this boot's, which is free too."""

_BOOT_ID = "/proc/sys/kernel/random/boot_id"
_MACHINE_IDS = ("/etc/machine-id", "/var/lib/dbus/machine-id")


def _read_id(path: str) -> str:
    """The id held in the file at ``path`` (its whole text, stripped), or "" where it cannot be
    read (none there)."""
    with contextlib.suppress(OSError, UnicodeDecodeError):
        return Path(path).read_text(encoding="ascii").strip()
    return ""


def _hex(*parts: str) -> str:
    """The SHA-256 of ``parts``, joined by NUL, in hex: a name that shows none of them."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def system_tag() -> str:
    """16 hex digits naming this running system: 12 from the host (its host name and machine
    id), 4 from its boot (Linux's boot id).

    A folder lock tells a live process only on the system that took it: on NFS mounted with
    local locks (``local_lock=all``), each host's ``flock`` always succeeds there, so a sweep
    that trusted the lock alone deleted another host's folder in use (the protector's staging
    folders, the runtime's AOTInductor load folders). Such a folder's name carries this tag,
    given at its creation, and only this host's folders are swept (:meth:`ThisSystem.owns`).
    A hash: the name shows neither the host nor the boot."""
    return _tags(socket.gethostname(), _read_id(_BOOT_ID))[0]


def _tags(host_name: str, boot: str) -> tuple[str, str]:
    """This system's tag (:func:`system_tag`) and the one versions before 2026-12-07 gave it,
    from its host name and boot id, read once by the caller."""
    machine = next(filter(None, map(_read_id, _MACHINE_IDS)), "")
    host = _hex("skruntime-host", host_name, machine)[:_HOST_DIGITS]
    tag = host + _hex("skruntime-boot", boot)[: 16 - _HOST_DIGITS]
    return tag, _hex("skprotect-staging", host_name, boot)[:16]


def last_change(folder: Path | str) -> float:
    """The newest modification time of ``folder`` and everything below it (links not
    followed), or now where none can be read: what a live process writes changes it."""
    paths = [folder]
    for parent, names, files in os.walk(folder):
        paths += (os.path.join(parent, name) for name in (*names, *files))
    times = []
    for path in paths:
        with contextlib.suppress(OSError):  # removed meanwhile
            times.append(os.lstat(path).st_mtime)
    return max(times, default=time.time())


@dataclass(frozen=True)
class ThisSystem:
    """What tells this system's folders apart, taken once for a sweep (:func:`this_system`)."""

    tag: str
    """This host in this boot (:func:`system_tag`)."""
    earlier_tag: str
    """The tag that versions before 2026-12-07 gave this host in this boot: a hash of its host
    name and boot id together, which no later boot can match."""
    booted: float
    """When this boot began (``time.time()``'s scale); -inf where it cannot be told."""

    def owns(self, tag: str, folder: Path | str) -> bool:
        """Whether ``folder``, named with the system tag ``tag``, was made on this system, so
        its lock tells whether a process still holds it: by this host in this boot, or in an
        earlier boot (no process of that boot lives on) if nothing in it changed since this
        boot began: one changed since is another machine's with this host name and machine id."""
        if tag in (self.tag, self.earlier_tag):
            return True
        this_host = tag[:_HOST_DIGITS] == self.tag[:_HOST_DIGITS]
        return this_host and last_change(folder) < self.booted


def this_system() -> ThisSystem:
    """This system's :class:`ThisSystem`, read now (the host name may have changed)."""
    boot_clock = getattr(time, "CLOCK_BOOTTIME", None)
    booted = -float("inf") if boot_clock is None else time.time() - time.clock_gettime(boot_clock)
    return ThisSystem(*_tags(socket.gethostname(), _read_id(_BOOT_ID)), booted)


_PR_SET_DUMPABLE = 4
_PR_GET_DUMPABLE = 3
_DUMPS_LOCK = threading.Lock()


@functools.cache
def _prctl() -> object | None:
    """libc's ``prctl`` (Linux), or None. Looked up once: ``ctypes.util.find_library`` runs
    ``ldconfig`` in a child process."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):  # pragma: no cover (no libc, a static Python)
        return None
    prctl.restype = ctypes.c_int
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    return prctl


@dataclass(frozen=True)
class _DumpState:
    """What :func:`disable_core_dumps` changed, to put back."""

    dumpable: int | None
    """The process's ``PR_GET_DUMPABLE`` before (None: not Linux, or unknown)."""
    core_limit: tuple[int, int] | None
    """Its ``RLIMIT_CORE`` before (None: no ``resource`` module)."""


def _disable() -> _DumpState:
    prctl = _prctl()
    dumpable = None
    if prctl is not None:
        before = prctl(_PR_GET_DUMPABLE, 0, 0, 0, 0)
        if before >= 0 and prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) == 0:
            dumpable = before
    core_limit = None
    if resource is not None:
        with contextlib.suppress(ValueError, OSError):
            core_limit = resource.getrlimit(resource.RLIMIT_CORE)
            resource.setrlimit(resource.RLIMIT_CORE, (0, core_limit[1]))
    return _DumpState(dumpable, core_limit)


def _restore(state: _DumpState) -> None:
    prctl = _prctl()
    if state.dumpable is not None and prctl is not None:
        prctl(_PR_SET_DUMPABLE, state.dumpable, 0, 0, 0)  # 2 (suid_dumpable) is refused: kept 0
    if state.core_limit is not None:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_CORE, state.core_limit)


class _Blocks:
    """The :func:`core_dumps_disabled` blocks in progress, in all threads, and the state the
    first of them found: the last one to end puts it back, unless :func:`disable_core_dumps`
    was called meanwhile. Each block put back what it had found itself: where two threads'
    blocks overlapped without nesting, the first to end made the process dumpable while the
    other still held its key, and the second left it undumpable for good."""

    count = 0
    found: _DumpState | None = None
    for_good = False


def disable_core_dumps() -> bool:
    """Keep the keys of this process out of core dumps, for the rest of its life: mark it not
    dumpable (Linux ``prctl(PR_SET_DUMPABLE, 0)``) and set its soft core-file limit to 0.

    A crash (a segmentation fault, ``abort()``, a ``SIGQUIT``) of a process that holds a loaded
    model writes its memory to a core file, or hands it to the system's crash collector
    (``systemd-coredump``, ``apport``), which may keep it on disk or send it elsewhere: the
    session key and, with ``kek=``, the key-encryption key that decrypts every model key of the
    application are in it. A process that is not dumpable writes none, whatever the core limit
    (with ``fs.suid_dumpable`` 0, the default; 2 leaves its dump to a collector run as root, 1
    dumps it as any other), and other processes of the same
    user may no longer attach a debugger to it or read ``/proc/PID/mem``; its ``/proc/PID``
    files belong to root. Children it starts with ``exec`` are dumpable again (the core limit
    is inherited). It does not keep out whoever can run code as this user: that one can start
    its own process and load the model (see the security notes of docs/runtime.md).

    Returns whether the process was marked not dumpable (False off Linux, where only the core
    limit is set, and where ``prctl`` failed). Process-wide: debuggers and profilers of this
    user cannot attach afterwards; a :func:`core_dumps_disabled` block in progress no longer
    puts the process back when it ends. ``skprotect run`` does this for its process.
    """
    with _DUMPS_LOCK:
        _Blocks.for_good = True
        return _disable().dumpable is not None


@contextlib.contextmanager
def core_dumps_disabled() -> Iterator[bool]:
    """:func:`disable_core_dumps` for the block, then the process as it was (its dumpable flag
    and soft core limit put back); yields what :func:`disable_core_dumps` returns. Blocks of
    several threads, nested or overlapping, keep core dumps off until the last one ends; after
    :func:`disable_core_dumps` they stay off."""
    with _DUMPS_LOCK:
        state = _disable()  # again in a nested block: something may have turned dumps on
        if _Blocks.count == 0:
            _Blocks.found = state
        _Blocks.count += 1
        marked = state.dumpable is not None
    try:
        yield marked
    finally:
        with _DUMPS_LOCK:
            _Blocks.count -= 1
            if _Blocks.count == 0:
                found, _Blocks.found = _Blocks.found, None
                if found is not None and not _Blocks.for_good:
                    _restore(found)
