"""Runtime test fixtures."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def deny_reading(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path], None]:
    """Make ``os.open`` of the given file raise EACCES, as it does for a file without read
    permission: tests run as root, who reads any file (``chmod 000`` stops no one), so the
    permission error is simulated where the kernel would give it, under
    :func:`skruntime.files.open_regular` (which has checked by then that the path is a
    regular file)."""
    real_open = os.open
    denied: set[Path] = set()

    def open_denied(path: Any, *args: Any, **kwargs: Any) -> int:
        if isinstance(path, str | os.PathLike) and Path(path) in denied:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_denied)
    return denied.add
