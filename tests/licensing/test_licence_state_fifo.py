"""A licence state file replaced by a named pipe (FIFO) or a folder is refused at once with a
LicenceError naming it: opened as before, a FIFO blocked the process until a writer came."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from skruntime.errors import LicenceError
from skruntime.licensing.identity import read_private_json


def _in_thread(fn, timeout: float = 10.0) -> BaseException | None:
    """Run ``fn`` in a daemon thread; the exception it raised, or fail if it is still running
    after ``timeout`` seconds (it blocked)."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            fn()
        except BaseException as e:
            outcome.append(e)
        else:
            outcome.append(None)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        pytest.fail(f"still blocked after {timeout} s")
    return outcome[0]


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_a_state_file_that_is_not_a_regular_file_is_refused_at_once(
    tmp_path: Path, kind: str
) -> None:
    path = tmp_path / "clock.json"
    if kind == "fifo":
        os.mkfifo(path, 0o600)
    else:
        path.mkdir(mode=0o700)
    error = _in_thread(lambda: read_private_json(path))
    assert isinstance(error, LicenceError)
    what = "a named pipe (FIFO)" if kind == "fifo" else "a folder"
    assert f"Cannot read {path}: {path} is {what}, not a regular file." == str(error)
