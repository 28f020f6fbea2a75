"""Runtime test fixtures."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture
def deny_reading(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path], None]:
    """Make ``Path.read_bytes`` of the given file raise EACCES: tests run as root, who reads
    any file, so a permission error has to be simulated."""
    read_bytes = Path.read_bytes
    denied: set[Path] = set()

    def read(path: Path) -> bytes:
        if path in denied:
            raise PermissionError(13, "Permission denied", str(path))
        return read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", read)
    return denied.add
