"""Runtime test fixtures."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.models import deploy_lifecycle

from skprotect_pytorch.protect import SkProtectorPyTorch


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


@pytest.fixture(scope="module")
def aoti_deployed(module_workdir: Path) -> Path:
    """The lifecycle MLP deployed as an AOTInductor CPU package (TXT), once per module."""
    return deploy_lifecycle(SkProtectorPyTorch.ExportFormat.INDUCTOR_CPU)


@pytest.fixture
def temp_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty temporary folder for torch (``TMPDIR``) and Python (``tempfile``), for
    this process and its children."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def left_in(folder: Path) -> list[str]:
    """What is in ``folder``, but for torch's compile cache (``torchinductor_<user>``), which
    torch creates there for any load, whatever the outcome, and keeps on purpose."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("torchinductor_"))
