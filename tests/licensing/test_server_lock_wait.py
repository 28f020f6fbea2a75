"""A device request that finds another connection writing (another server process, an admin
command) waits for the lock at most ``database_pool_timeout_s`` in all, then is answered 503
with ``Retry-After``: before, it waited 30 s on SQLite (its busy timeout) and for ever on
PostgreSQL (no lock timeout), so the device (5 s request timeout) gave up and asked again while
the server still worked on its first request. The admin CLI, which runs under no device's
timeout, still waits for the lock."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.engine import make_url
from tests.licensing.server_helpers import FakeDevice, make_application, make_customer
from typer.testing import CliRunner

from sklicense import cli, db
from sklicense.api import database_errors
from sklicense.api.main import create_app
from sklicense.embedded import EmbeddedServer
from sklicense.settings import Settings

SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def locking(url: str) -> Any:
    """Another connection in a transaction that holds what a licence request of customer 42
    writes: SQLite's write lock, PostgreSQL's row of the customer."""
    if url.startswith("sqlite"):
        connection = sqlite3.connect(make_url(url).database, isolation_level=None)
        connection.execute("BEGIN IMMEDIATE")
        return connection
    connection = psycopg.connect(
        make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    )
    connection.execute("SELECT id FROM customers WHERE id = 42 FOR UPDATE")
    return connection


@contextmanager
def writer_for(url: str, seconds: float) -> Iterator[None]:
    """Another connection holding the lock for ``seconds`` (or until the block ends)."""
    locked, done = threading.Event(), threading.Event()

    def hold() -> None:
        connection = locking(url)
        locked.set()
        done.wait(seconds)
        connection.rollback()
        connection.close()

    thread = threading.Thread(target=hold)
    thread.start()
    locked.wait()
    try:
        yield
    finally:
        done.set()
        thread.join()


def ask(client: TestClient, clock: Any, device_id: str) -> tuple[Any, float]:
    """A licence request of a new device; the answer and the seconds it took."""
    device = FakeDevice(device_id)
    body = device.licence_request(42, clock.now)
    start = time.monotonic()
    answer = client.post("/v1/licences", json=body, headers=device.headers(body))
    return answer, time.monotonic() - start


@pytest.fixture
def quick_client(database_url: str, state_dir: Path, clock: Any, sessions: Any):
    """The server of one application and customer 42, with a pool timeout of 0.5 s."""
    make_application(sessions)
    make_customer(sessions)
    settings = Settings(database_url=database_url, state_dir=state_dir, database_pool_timeout_s=0.5)
    with TestClient(create_app(settings, clock)) as client:
        yield client
    db.get_engine(database_url, 0.5).dispose()


def test_a_device_request_waits_for_the_write_lock_only_the_pool_timeout(
    database_url, quick_client, clock
) -> None:
    """Before: the request waited for the 6 s lock and was answered 200 after 6 s (SQLite: after
    30 s, 503, had the lock been held longer), past the device's 5 s timeout."""
    with writer_for(database_url, 6):
        answer, seconds = ask(quick_client, clock, "dev-1")
    assert answer.status_code == 503, answer.text
    assert answer.json() == {"detail": database_errors.BUSY}
    assert answer.headers["Retry-After"] == "10"
    assert seconds < 2


def test_requests_queued_behind_a_waiting_one_are_answered_in_time_too(
    database_url, quick_client, clock
) -> None:
    """SQLite: requests of one process take turns (``device_writes``): each waits the pool
    timeout in all, its turn included, not the pool timeout after the requests before it
    waited theirs."""
    with writer_for(database_url, 8), ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda i: ask(quick_client, clock, f"dev-{i}"), range(4)))
    assert [answer.status_code for answer, _ in answers] == [503] * 4
    assert max(seconds for _, seconds in answers) < 2
    details = {answer.json()["detail"] for answer, _ in answers}
    assert details == {database_errors.BUSY}


def test_the_request_is_answered_once_the_lock_is_free_in_time(
    database_url, quick_client, clock
) -> None:
    with writer_for(database_url, 0.2):
        answer, _ = ask(quick_client, clock, "dev-1")
    assert answer.status_code == 200, answer.text


@SQLITE
def test_a_pooled_connection_gets_its_engine_timeout_back_after_a_device_request(
    database_url,
) -> None:
    """The shortened wait of a device request's transactions is not left on the connection for
    the next transaction of the pool."""
    engine = db.get_engine(database_url, 2)

    def busy_timeout() -> int:
        with engine.begin() as connection:
            return connection.execute(text("PRAGMA busy_timeout")).scalar_one()

    with db.device_writes(database_url, 0.5):
        assert 300 <= busy_timeout() <= 500
    assert busy_timeout() == 2000
    engine.dispose()


@SQLITE
def test_the_admin_cli_waits_for_a_lock_longer_than_a_device_would(database_url) -> None:
    """An admin command runs locally: a write lock held past the server's 3 s default delays it
    instead of failing it."""
    with writer_for(database_url, 4):
        start = time.monotonic()
        args = ["customer", "create", "--id", "7", "--name", "Late", "--quota", "5"]
        result = CliRunner().invoke(cli.app, [*args, "--database-url", database_url])
    assert result.exit_code == 0, result.output
    assert time.monotonic() - start >= 3.5


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_the_lock_timeout_keeps_the_urls_own_options(database_url) -> None:
    """The URL's ``options`` are kept, and its own ``lock_timeout`` wins outside device
    requests; the lock timeout is no startup parameter (PgBouncer refuses ``options``)."""

    def shown(url: str) -> tuple[str, str]:
        engine = db.get_engine(url, 0.25)
        with engine.connect() as connection:
            lock = connection.execute(text("SHOW lock_timeout")).scalar_one()
            path = connection.execute(text("SHOW search_path")).scalar_one()
        engine.dispose()
        return lock, path

    assert shown(f"{database_url}?options=-c%20search_path%3Dpublic") == ("250ms", "public")
    assert shown(f"{database_url}?options=-c%20lock_timeout%3D7s") == ("7s", '"$user", public')
    assert db._postgres_connect_args(database_url) == {"connect_timeout": db.CONNECT_TIMEOUT_S}
    engine = db.get_engine(f"{database_url}?options=-c%20lock_timeout%3D7s", 0.25)
    with db.device_writes(database_url, 0.5), engine.connect() as connection:
        device = connection.execute(text("SHOW lock_timeout")).scalar_one()
    engine.dispose()
    assert device in {f"{ms}ms" for ms in range(400, 501)}


@SQLITE
def test_an_embedded_server_closes_the_connections_of_its_own_engine(
    database_url, state_dir
) -> None:
    """The server's engine (its pool timeout) is not the admin commands' (``db.get_engine(url)``,
    which the quickstart closes): the embedded server closes its own when it stops."""
    settings = Settings(
        database_url=database_url, state_dir=state_dir, database_pool_timeout_s=0.75
    )
    engine = db.get_engine(database_url, 0.75)
    with EmbeddedServer(settings) as server:
        assert httpx.get(f"{server.url}/v1/health").status_code == 200  # a connection
    assert (engine.pool.checkedin(), engine.pool.checkedout()) == (0, 0)  # before: (1, 0)
