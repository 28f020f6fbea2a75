"""A licence server whose database fails answers 5xx with what to do (``database_errors``);
the runtime said only that the server was "unreachable (HTTP 500)" and to "connect to the
server once", though it was reached: the server's detail (a full database disk, a database
never migrated) was dropped. Now it quotes it. Against the real server app on SQLite."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from tests.licensing.server_helpers import Clock, device_client, sqlite_server

from sklicense.api import database_errors
from skruntime.errors import ClockRollbackError, LicenceUnavailableError
from skruntime.licensing.protocol import unb64


@pytest.fixture
def server(tmp_path: Path, state_dir: Path, clock: Clock) -> Iterator[tuple[TestClient, Path]]:
    """A client of the server app on a SQLite file of its own, a customer provisioned."""
    with sqlite_server(tmp_path, state_dir, clock, inference_quota=1000) as served:
        yield served


def device(client: TestClient, folder: Path, clock: Clock) -> Any:
    pinned = unb64(client.get("/v1/public-key").json()["public_key"])
    runtime = device_client("http://testserver", client._transport, pinned, folder, clock)
    runtime.resend_delays = (0.0, 0.0)
    return runtime


def test_no_licence_and_a_server_error_quotes_the_servers_detail(server, tmp_path, clock) -> None:
    client, path = server
    runtime = device(client, tmp_path / "device", clock)
    with sqlite3.connect(path) as connection:
        connection.execute("DROP TABLE seen_nonces")  # the URL of another database
    with pytest.raises(LicenceUnavailableError) as error:
        runtime.ensure_licence()
    message = str(error.value)
    assert "unreachable" not in message and "Connect to the server" not in message
    assert f"answered with an error, HTTP 500 {database_errors.NOT_MIGRATED!r}" in message
    assert "ask the server's administrator" in message


def test_a_failed_renewal_warns_with_the_servers_detail(server, tmp_path, clock, caplog) -> None:
    client, path = server
    runtime = device(client, tmp_path / "device", clock)
    licence = runtime.ensure_licence()
    with sqlite3.connect(path) as connection:
        connection.execute("DROP TABLE seen_nonces")
    clock.now = licence.expires_at - 30  # inside the renewal window
    with caplog.at_level(logging.WARNING, logger="skruntime.licensing.client"):
        assert runtime.ensure_licence() == licence
    assert f"answered with an error, HTTP 500 {database_errors.NOT_MIGRATED!r}" in caplog.text
    clock.now = licence.expires_at
    with pytest.raises(LicenceUnavailableError, match=r"expired at .* answered with an error"):
        runtime.ensure_licence()


def test_a_clock_the_server_errs_on_is_not_told_to_connect(server, tmp_path, clock) -> None:
    """A clock the last time seen is ahead of asks the server to confirm it: its server error
    was followed by the advice to "connect the device to the licence server once", though the
    device had reached it."""
    client, path = server
    folder = tmp_path / "device"
    first = device(client, folder, clock)
    first.consume()
    first.close()
    (folder / "clock.json").write_text(json.dumps({"last_seen": clock.now + 3 * 86400}))
    with sqlite3.connect(path) as connection:
        connection.execute("DROP TABLE seen_nonces")
    with pytest.raises(ClockRollbackError) as error:
        device(client, folder, clock).ensure_licence()
    message = str(error.value)
    assert f"answered with an error, HTTP 500 {database_errors.NOT_MIGRATED!r}" in message
    assert "connect the device" not in message and "server's administrator has fixed" in message
