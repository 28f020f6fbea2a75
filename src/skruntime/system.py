"""A tag naming the running system, for folders that a later run may sweep."""

from __future__ import annotations

import contextlib
import hashlib
import socket
from pathlib import Path

__all__ = ["system_tag"]


def system_tag() -> str:
    """16 hex digits naming this running system: its host name and boot (Linux's boot id).

    A folder lock tells a live process only on the system that took it: on NFS mounted with
    local locks (``local_lock=all``), each host's ``flock`` always succeeds there, so a sweep
    that trusted the lock alone deleted another host's folder in use (the protector's staging
    folders, the runtime's AOTInductor load folders). Such a folder's name carries this tag,
    given at its creation, and only this system's folders are swept. A hash: the name shows
    neither the host nor the boot."""
    boot = ""
    with contextlib.suppress(OSError):
        boot = Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
    system = f"skprotect-staging\0{socket.gethostname()}\0{boot}".encode()
    return hashlib.sha256(system).hexdigest()[:16]
