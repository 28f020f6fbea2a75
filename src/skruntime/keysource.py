"""Where the runtime gets a model's key: one module per deployment platform behind
:class:`KeySource`, as the backends are behind :class:`~.backends.base.Backend`.

- TXT: :class:`~.keyfile.TxtKeySource`, the two plain key files next to the model file;
- LINUX: :class:`~.mev.LinuxKeySource`, the encrypted key file, opened with the
  key-encryption key given to the runtime or released by the licence server.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .errors import KeyUnavailableError
from .keyfile import KeyMaterial, TxtKeySource
from .mev import KEK_SIZE, LinuxKeySource

__all__ = ["KEY_SOURCES", "KeySource", "KeyUnlock", "check_kek", "kek_encoding"]


def kek_encoding(text: bytes) -> str | None:
    """How ``text`` encodes a 32-byte key, if it does: ``"base64"`` (what ``skprotect
    export-kek`` writes, a line end included) or ``"hex"``; None otherwise."""
    text = text.strip()
    if len(text) == 2 * KEK_SIZE:
        try:
            bytes.fromhex(text.decode("ascii"))
        except ValueError:
            pass
        else:
            return "hex"
    try:
        if len(base64.b64decode(text, validate=True)) == KEK_SIZE:
            return "base64"
    except (binascii.Error, ValueError):
        pass
    return None


def check_kek(kek: object) -> bytes | None:
    """``kek`` as the 32 raw bytes of a key-encryption key (None stays None), or
    KeyUnavailableError saying what was given instead and how to turn it into those bytes: the
    file that ``skprotect export-kek`` writes holds base64 text, which read as it is is 45
    bytes, not a key."""
    if kek is None:
        return None
    if isinstance(kek, bytes | bytearray) and len(kek) == KEK_SIZE:
        return bytes(kek)
    wanted = f"kek must be {KEK_SIZE} bytes, the raw key-encryption key,"
    if isinstance(kek, str):
        got, text = "a str", kek.encode("ascii", "replace")
    elif isinstance(kek, bytes | bytearray):
        got, text = f"{len(kek)} bytes", bytes(kek)
    else:
        raise KeyUnavailableError(f"{wanted} but got {type(kek).__name__}.")
    how = {
        "base64": " holding its base64 text (as `skprotect export-kek` writes the file): pass "
        "base64.b64decode(Path(file).read_bytes())",
        "hex": " holding its hex text: pass bytes.fromhex(text)",
        None: ": pass the key that `skprotect export-kek` writes, base64-decoded "
        "(base64.b64decode(Path(file).read_bytes()))",
    }[kek_encoding(text)]
    raise KeyUnavailableError(f"{wanted} but got {got}{how}.")


@dataclass(frozen=True, repr=False)
class KeyUnlock:
    """What a runtime holds to unlock encrypted keys (``repr`` hides the key)."""

    kek: bytes | None
    """The 32-byte key-encryption key given to the runtime (``kek=``, ``--kek``), or None;
    check it with :func:`check_kek` first."""
    from_licence: Callable[[], bytes] | None
    """Releases the key-encryption key from a valid licence (licensing on), or None."""

    def __reduce__(self) -> Any:
        # a pickle (or copy) of it, or of the key source holding it, carried the KEK in clear
        raise TypeError("KeyUnlock cannot be pickled or copied: it holds the key-encryption key.")


class KeySource(Protocol):
    """The key files of one deployment platform, read for one protected model file."""

    def __init__(self, outputs_dir: Path, config_path: Path, unlock: KeyUnlock) -> None:
        """Key files under ``outputs_dir`` (for messages: the configuration ``config_path``);
        raise KeyUnavailableError for an ``unlock`` this platform cannot use."""
        ...

    def read(
        self, model_name: str, fmt: str, key_files: Sequence[str], model_sha256: str
    ) -> KeyMaterial:
        """The key of ``model_name`` in format ``fmt``, from the configuration's ``key_files``,
        checked against the model file's SHA-256 (KeyFileError, KeyUnavailableError)."""
        ...


KEY_SOURCES: dict[str, type[KeySource]] = {"TXT": TxtKeySource, "LINUX": LinuxKeySource}
"""The key source of each platform of :data:`~.config.PLATFORMS`."""
