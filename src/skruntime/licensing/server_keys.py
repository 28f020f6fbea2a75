"""``server_keys.json`` in the runtime's state folder: what the runtimes of this device learnt
of each licence server's key, so that a process started afresh need not learn it again.

``{"checked": {"<server URL>": "<base64 key>"}, "signs": {...}}``: the key a server presented at
``GET /v1/public-key`` when it was one of the pinned keys, and the key that signed its answers
(the full rules are in :mod:`.client`'s docs). Each note counts only while its key is pinned, and
both follow the key the server signs with, so that they name the new key after a rotation of
the server's key. Other entries (a newer runtime's) are kept when the file is rewritten.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import LicenceError
from . import protocol
from .identity import (
    MalformedStateError,
    UnsafeFileError,
    read_private_json,
    state_lock,
    write_private,
)

__all__ = ["CHECKED", "SERVER_KEYS_FILENAME", "SIGNS", "ServerKeyNotes"]

log = logging.getLogger(__name__)

SERVER_KEYS_FILENAME = "server_keys.json"
"""The server keys already checked against the pinned ones, and seen signing."""
CHECKED, SIGNS = "checked", "signs"
"""The maps of ``server_keys.json``: servers whose key was checked, servers seen signing."""


class ServerKeyNotes:
    """The notes of ``server_keys.json`` in ``state_dir`` about the server at ``server_url``, for
    a runtime pinning the raw keys ``pinned``."""

    def __init__(self, state_dir: Path, server_url: str, pinned: Sequence[bytes]) -> None:
        self.path = state_dir / SERVER_KEYS_FILENAME
        self._state_dir = state_dir
        self._url = server_url
        self._pinned = frozenset(protocol.b64(key) for key in pinned)

    def checked(self) -> bool:
        """Whether the key this server presented was checked, and is pinned here."""
        return self.read()[CHECKED].get(self._url) in self._pinned

    def signs(self) -> bool:
        """Whether this server was seen signing its answers with a key pinned here."""
        return self.read()[SIGNS].get(self._url) in self._pinned

    def read(self) -> dict[str, Any]:
        """The notes, ``{"checked": {server URL: base64 key}, "signs": {...}}``, with any other
        entry of the file as it is (a newer runtime's: kept when this one rewrites the file);
        empty, with a warning, when the file is malformed (it only holds checks: they are made
        again)."""
        try:
            data = read_private_json(self.path)
        except MalformedStateError:
            data = []
        if data is None:
            return {CHECKED: {}, SIGNS: {}}
        notes = dict(data) if isinstance(data, dict) else {}
        for name in (CHECKED, SIGNS):
            noted = (
                data.get(name, {} if name == SIGNS else None) if isinstance(data, dict) else None
            )
            if not isinstance(noted, dict) or not all(isinstance(v, str) for v in noted.values()):
                log.warning(
                    "%s is malformed; the server key is checked again and it is rewritten.",
                    self.path,
                )
                return {CHECKED: {}, SIGNS: {}}
            notes[name] = noted
        return notes

    def note(self, name: str, key: bytes | None) -> None:
        """Note ``key``, a pinned one, for this server in the ``name`` map, or (``None``) drop
        the server's entry. A failed write is only warned about: what it notes is checked
        again."""
        try:  # the file, or its lock file (no inode left): after a licence was issued, too
            with state_lock(self._state_dir, "server_keys"):
                notes = self.read()
                if key is not None:
                    notes[name][self._url] = protocol.b64(key)
                elif notes[name].pop(self._url, None) is None:
                    return
                if not notes[SIGNS]:
                    del notes[SIGNS]  # absent while empty
                write_private(self.path, protocol.canonical_bytes(notes))
        except UnsafeFileError:
            raise
        except LicenceError as e:
            log.warning("%s What it notes of the licence server is checked again.", e)

    def follow_signer(self, key: bytes) -> None:
        """Note that this server signs with ``key``, a pinned one, where the ``signs`` note is
        missing (a runtime older than the note rewrites the file without it) or names another
        key; the ``checked`` note, when there is one, follows too. After a rotation of the
        server's key both name the new key: a release pinning it alone takes them, and a
        runtime pinning the old key alone asks for the server's key again and is refused
        before its licence request is charged."""
        notes, signer = self.read(), protocol.b64(key)
        for name in (SIGNS, CHECKED):
            noted = notes[name].get(self._url)
            if noted != signer and (name == SIGNS or noted is not None):
                self.note(name, key)
