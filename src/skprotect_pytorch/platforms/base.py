"""The deployment-platform interface and the ``ExportPlatform`` → platform registry.

Adding a platform is one new module with one class decorated by :func:`register_platform`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from skruntime.config import ModelEntry

from ..formats import ExportPlatform


@dataclass(frozen=True)
class GroupKeys:
    """One format group's key and what its key files are bound to. ``repr`` shows neither the
    key, nor the commitment nonce, nor the KEK (a crash reporter recording locals printed them),
    and it cannot be pickled or copied, like :class:`~..state.ProtectionState`."""

    model_name: str
    static_key: np.ndarray = field(repr=False)  # the canonical key (KeyLayout.static_key())
    spec: dict[str, Any]  # its layout (KeyLayout.spec())
    model_hashes: dict[str, str]  # this protection's model file SHA-256, per format slug
    unlocks: list[str]  # every model file SHA-256 that TXT key files of the group unlock
    test_key: bool
    rng: np.random.Generator  # draws the masks of TXT key shares
    commitment_nonce: str = field(repr=False)  # of the key commitment its model files record
    kek: bytes = field(repr=False)  # the application's key-encryption key (encrypted key files)

    def __reduce__(self) -> tuple:
        """Refuse pickling and copying: the pickle would hold the key and the KEK in clear."""
        raise TypeError("GroupKeys cannot be pickled or copied: it holds the key and the KEK.")


class KeyFileFault(Exception):
    """A key file that cannot say which model file it was written for: unreadable or damaged
    (raised by :meth:`Platform.written_for`, reported by the migration from version 0)."""

    def __init__(self, path: Path, model_name: str, problem: str) -> None:
        super().__init__(f"{path} {problem}")
        self.path = path
        self.model_name = model_name
        self.problem = problem  # e.g. "cannot be read (Permission denied)"


@runtime_checkable
class Platform(Protocol):
    """Writes a format group's key files for one platform and checks them."""

    member: ExportPlatform

    def writes_plain_keys(self, test_key: bool) -> bool:
        """Whether a protection writes TXT key files (the plain key, or its two shares)."""
        ...

    def write_keys(self, folder: Path, keys: GroupKeys) -> dict[str, list[Path]]:
        """Write the group's key files into ``folder``; returns the key files of each slug."""
        ...

    def written_for(
        self,
        outputs_dir: Path,
        model_name: str,
        entry: ModelEntry,
        slug: str,
        digest: str,
        kek: bytes | None,
    ) -> bool:
        """Whether the key files of ``entry``'s format ``slug`` (paths relative to
        ``outputs_dir``) were written for the model file of SHA-256 ``digest``; True where they
        do not say (missing key files: the runtime reports them). ``kek``: the application's
        key-encryption key, None where encrypted key files cannot be checked. Raises
        :class:`KeyFileFault` for a key file that is there but unreadable or damaged."""
        ...


_PLATFORMS: dict[ExportPlatform, Platform] = {}


def register_platform(member: ExportPlatform) -> Callable[[type], type]:
    """Class decorator: register ``cls()`` as the platform of ``member``."""

    def wrap(cls: type) -> type:
        _PLATFORMS[member] = cls()
        return cls

    return wrap


def get_platform(member: ExportPlatform) -> Platform:
    """The platform of ``member`` (each ``ExportPlatform`` has its module in this package)."""
    return _PLATFORMS[member]
