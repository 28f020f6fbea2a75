"""A PostgreSQL server that accepts the connection and never answers (a wrong port, a stalled
host) is an ``Error:`` line after the connect timeout, not a CLI waiting for ever."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

CLI = "from sklicense import cli, db; db.CONNECT_TIMEOUT_S = {default}; cli.main()"


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port whose connections are accepted (by the kernel's backlog) and never answered."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


def customer_list(url: str, default: int) -> tuple[subprocess.CompletedProcess[str], float]:
    """``sklicense customer list`` against ``url``, with ``default`` as the connect timeout."""
    start = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            CLI.format(default=default),
            "customer",
            "list",
            "--database-url",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=60,  # the old code waited for ever: this fails the test instead
    )
    return done, time.monotonic() - start


def test_a_silent_database_server_is_an_error_after_the_connect_timeout(silent_server) -> None:
    done, _ = customer_list(f"postgresql://postgres@127.0.0.1:{silent_server}/x", 1)
    assert done.returncode == 1
    assert done.stderr.startswith("Error: the database refused: connection timeout expired.")


def test_the_url_sets_another_connect_timeout(silent_server) -> None:
    url = f"postgresql://postgres@127.0.0.1:{silent_server}/x?connect_timeout=1"
    done, seconds = customer_list(url, 300)
    assert done.returncode == 1 and "connection timeout expired" in done.stderr
    assert seconds < 30
