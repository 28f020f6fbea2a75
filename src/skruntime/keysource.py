"""Where the runtime gets a model's key: one module per deployment platform behind
:class:`KeySource`, as the backends are behind :class:`~.backends.base.Backend`.

- TXT: :class:`~.keyfile.TxtKeySource`, the two plain key files next to the model file;
- LINUX: :class:`~.mev.LinuxKeySource`, the encrypted key file, opened with the
  key-encryption key given to the runtime or released by the licence server.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .keyfile import KeyMaterial, TxtKeySource
from .mev import LinuxKeySource

__all__ = ["KEY_SOURCES", "KeySource", "KeyUnlock"]


@dataclass(frozen=True, repr=False)
class KeyUnlock:
    """What a runtime holds to unlock encrypted keys (``repr`` hides the key)."""

    kek: bytes | None
    """The 32-byte key-encryption key given to the runtime (``kek=``, ``--kek``), or None."""
    from_licence: Callable[[], bytes] | None
    """Releases the key-encryption key from a valid licence (licensing on), or None."""


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
