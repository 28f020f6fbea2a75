"""A tag naming the running system, for folders that a later run may sweep."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ThisSystem", "last_change", "system_tag", "this_system"]

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
