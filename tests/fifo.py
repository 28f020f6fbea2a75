"""Running a call that may block on a named pipe (FIFO) without hanging the test run."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


def raised_without_blocking(
    call: Callable[[], Any], fifo: Path, timeout: float = 20.0
) -> BaseException | None:
    """What ``call`` raises (None if nothing), failing the test if it is still running after
    ``timeout`` seconds (it blocked): then a writer opens ``fifo`` so that the blocked reader
    ends instead of hanging the test run."""
    outcome: list[BaseException | None] = []

    def target() -> None:
        try:
            call()
            outcome.append(None)
        except BaseException as err:  # handed to the test
            outcome.append(err)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        if fifo.exists() and not fifo.is_dir():
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(timeout)
        pytest.fail(f"reading {fifo} blocked")
    return outcome[0]
