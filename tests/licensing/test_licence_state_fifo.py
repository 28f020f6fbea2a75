"""A licence state file replaced by a named pipe (FIFO) or a folder is refused at once with a
LicenceError naming it: opened as before, a FIFO blocked the process until a writer came."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tests.fifo import raised_without_blocking

from skruntime.errors import LicenceError
from skruntime.licensing.identity import read_private_json


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_a_state_file_that_is_not_a_regular_file_is_refused_at_once(
    tmp_path: Path, kind: str
) -> None:
    path = tmp_path / "clock.json"
    if kind == "fifo":
        os.mkfifo(path, 0o600)
    else:
        path.mkdir(mode=0o700)
    error = raised_without_blocking(lambda: read_private_json(path), path, timeout=10)
    assert isinstance(error, LicenceError)
    what = "a named pipe (FIFO)" if kind == "fifo" else "a folder"
    assert f"Cannot read {path}: {path} is {what}, not a regular file." == str(error)
