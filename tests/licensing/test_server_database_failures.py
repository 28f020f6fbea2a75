"""Requests the database fails: 503 with ``Retry-After`` only when a retry can succeed.

- A pool run dry (every connection held by slow requests) kept a request waiting
  SQLAlchemy's default 30 s, then answered a bare 500; now it waits the setting
  ``database_pool_timeout_s`` and is answered 503 with ``Retry-After``.
- A database never migrated ("no such table", PostgreSQL ``undefined_table``), read-only, or a
  file that is not a database was answered 503 "retry later" (SQLite) or a bare 500
  (PostgreSQL, and SQLite's "file is not a database"): no retry ever succeeds, so now it is a
  500 whose detail says what to do, the cause logged.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import psycopg.errors
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, event
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from tests.licensing.conftest import PG_MAINTENANCE_URL
from tests.licensing.server_helpers import Clock, FakeDevice, bearer, make_application

from sklicense import crud, db
from sklicense.api import database_errors
from sklicense.api.main import create_app
from sklicense.settings import DEFAULT_POOL_TIMEOUT_S, Settings, SettingsError

CUSTOMER = {"id": 7, "name": "Acme", "inference_quota": 10}


def held_connections(engine: Engine) -> list[Any]:
    """Every connection of ``engine``'s pool, checked out (until the pool times out)."""
    held = []
    while True:
        try:
            held.append(engine.connect())
        except PoolTimeoutError:
            return held


def test_a_request_finding_no_free_connection_is_503_after_the_pool_timeout(
    database_url: str, state_dir: Path, clock: Clock, caplog: Any
) -> None:
    """Before: 30.1 s, then ``500 Internal Server Error`` (PostgreSQL and SQLite alike)."""
    settings = Settings(database_url=database_url, state_dir=state_dir, database_pool_timeout_s=0.5)
    app = create_app(settings, clock)
    held = held_connections(app.state.engine)
    try:
        device = FakeDevice("dev-1")
        body = device.licence_request(42, clock.now)
        with (
            TestClient(app, raise_server_exceptions=False) as client,
            caplog.at_level(logging.ERROR, logger="sklicense.api.main"),
        ):
            for send in (
                lambda: client.get("/v1/health"),
                lambda: client.post("/v1/licences", json=body, headers=device.headers(body)),
            ):
                start = time.monotonic()
                response = send()
                assert time.monotonic() - start < 3
                assert response.status_code == 503
                assert response.json() == {"detail": database_errors.BUSY}
                assert response.headers["Retry-After"] == "10"
    finally:
        for connection in held:
            connection.close()
        db.get_engine(database_url, 0.5).dispose()
    logged = [r.getMessage() for r in caplog.records if r.name == "sklicense.api.main"]
    assert logged[0].startswith("GET /v1/health failed, the database is unavailable: QueuePool")


def test_the_pool_timeout_is_a_setting() -> None:
    assert Settings().database_pool_timeout_s == DEFAULT_POOL_TIMEOUT_S == 3.0
    env = {"SKLICENSE_DATABASE_POOL_TIMEOUT_S": "1.5"}
    assert Settings.from_env(env).database_pool_timeout_s == 1.5
    assert Settings.from_env({"SKLICENSE_DATABASE_POOL_TIMEOUT_S": ""}).database_pool_timeout_s == 3
    with pytest.raises(SettingsError) as error:
        Settings.from_env({"SKLICENSE_DATABASE_POOL_TIMEOUT_S": "soon"})
    assert str(error.value) == (
        "SKLICENSE_DATABASE_POOL_TIMEOUT_S must be a number of seconds, but got 'soon'"
    )
    for bad in ("0", "-1", "nan", "inf"):
        with pytest.raises(SettingsError, match=r"must be a finite number of seconds > 0"):
            Settings.from_env({"SKLICENSE_DATABASE_POOL_TIMEOUT_S": bad})
    with pytest.raises(SettingsError, match="but got True"):
        Settings(database_pool_timeout_s=True)


@pytest.fixture
def sqlite_app(tmp_path: Path, state_dir: Path) -> Iterator[tuple[TestClient, Path, str]]:
    """A client of a server on a fresh SQLite file, the file and an admin token."""
    path = tmp_path / "sklicense.db"
    url = f"sqlite:///{path}"
    db.upgrade(url)
    with db.session_factory(url).begin() as session:
        token = crud.create_token(session, "admin", "test")
    app = create_app(Settings(database_url=url, state_dir=state_dir), Clock())
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            yield client, path, token
    finally:
        db.get_engine(url).dispose()


def refused(client: TestClient, token: str, detail: str, cause: str, caplog: Any) -> None:
    """Creating a customer fails with a 500 whose detail is ``detail``, ``cause`` logged."""
    with caplog.at_level(logging.ERROR, logger="sklicense.api.main"):
        response = client.post("/v1/admin/customers", json=CUSTOMER, headers=bearer(token))
    assert (response.status_code, response.json()) == (500, {"detail": detail})
    assert "Retry-After" not in response.headers
    (line,) = [r.getMessage() for r in caplog.records if r.name == "sklicense.api.main"]
    assert line == (
        f"POST /v1/admin/customers failed, the database needs an administrator: {cause}"
    )


def test_sqlite_missing_table_is_500_saying_to_migrate(sqlite_app: Any, caplog: Any) -> None:
    """Before: 503 "retry later", for ever."""
    client, path, token = sqlite_app
    with sqlite3.connect(path) as connection:
        connection.execute("DROP TABLE customers")
    refused(client, token, database_errors.NOT_MIGRATED, "no such table: customers", caplog)
    assert "sklicense db upgrade" in database_errors.NOT_MIGRATED


def test_sqlite_read_only_database_is_500_saying_to_fix_permissions(
    sqlite_app: Any, caplog: Any
) -> None:
    """Before: 503 "retry later" (read-only here as a server's user without write access to
    the file finds it; the tests run as root, whom file permissions do not stop)."""
    client, _path, token = sqlite_app
    engine = client.app.state.engine
    engine.dispose()
    event.listen(
        engine, "connect", lambda connection, record: connection.execute("PRAGMA query_only=ON")
    )
    cause = "attempt to write a readonly database"
    refused(client, token, database_errors.READ_ONLY, cause, caplog)


def test_a_file_that_is_not_a_database_is_500_saying_what_to_check(
    sqlite_app: Any, caplog: Any
) -> None:
    """Before: a bare 500 "Internal Server Error"."""
    client, path, token = sqlite_app
    client.app.state.engine.dispose()
    path.write_bytes(b"not a database " * 1000)
    refused(client, token, database_errors.NOT_A_DATABASE, "file is not a database", caplog)


@pytest.fixture
def postgres_app(state_dir: Path) -> Iterator[tuple[TestClient, str, str]]:
    """A client of a server on a fresh PostgreSQL database of its own, the database's URL and
    an admin token."""
    name = f"sklicense_fail_{secrets.token_hex(6)}"
    with psycopg.connect(PG_MAINTENANCE_URL, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        url = db.normalise_url(f"{PG_MAINTENANCE_URL.rsplit('/', 1)[0]}/{name}")
        try:
            db.upgrade(url)
            with db.session_factory(url).begin() as session:
                token = crud.create_token(session, "admin", "test")
            app = create_app(Settings(database_url=url, state_dir=state_dir), Clock())
            with TestClient(app, raise_server_exceptions=False) as client:
                yield client, url, token
        finally:
            db.get_engine(url).dispose()
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_postgres_missing_table_is_500_saying_to_migrate(postgres_app: Any, caplog: Any) -> None:
    """Before: a bare 500 "Internal Server Error" (a ProgrammingError, unhandled)."""
    client, url, token = postgres_app
    with db.get_engine(url).begin() as connection:
        connection.exec_driver_sql("DROP TABLE customers CASCADE")
    cause = 'relation "customers" does not exist'
    refused(client, token, database_errors.NOT_MIGRATED, cause, caplog)


def test_postgres_read_only_database_is_500_saying_to_use_the_primary(
    postgres_app: Any, caplog: Any
) -> None:
    """Before: a bare 500 (an InternalError, unhandled)."""
    client, url, token = postgres_app
    name = url.rsplit("/", 1)[1]
    with db.get_engine(url).begin() as connection:
        connection.exec_driver_sql(
            f'ALTER DATABASE "{name}" SET default_transaction_read_only = on'
        )
    db.get_engine(url).dispose()  # new connections take the database's setting
    cause = "cannot execute INSERT in a read-only transaction"
    refused(client, token, database_errors.READ_ONLY, cause, caplog)


def locked_sqlite_error(tmp_path: Path) -> sqlite3.OperationalError:
    """The error of a write to a SQLite file another connection holds locked."""
    path = tmp_path / "locked.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (a)")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        sqlite3.connect(path, timeout=0).execute("INSERT INTO t VALUES (1)")
    except sqlite3.OperationalError as error:
        return error
    finally:
        holder.close()
    raise AssertionError("the write was not refused")


@pytest.mark.parametrize(
    ("cause", "error_type", "status"),
    [
        (psycopg.errors.DeadlockDetected("deadlock detected"), OperationalError, 503),
        (psycopg.errors.AdminShutdown("terminating connection"), OperationalError, 503),
        (psycopg.errors.LockNotAvailable("could not obtain lock"), OperationalError, 503),
        (psycopg.OperationalError("connection refused"), OperationalError, 503),
        (psycopg.errors.UndefinedTable("no relation"), ProgrammingError, 500),
        (psycopg.errors.InsufficientPrivilege("permission denied"), ProgrammingError, 500),
        (psycopg.errors.ReadOnlySqlTransaction("read-only"), DBAPIError, 500),
        (psycopg.errors.UniqueViolation("duplicate key"), IntegrityError, None),
    ],
)
def test_postgres_errors_are_classified(cause: Exception, error_type: Any, status: Any) -> None:
    failure = database_errors.classify(error_type("SELECT 1", {}, cause))
    assert (failure and failure.status) == status


def test_a_locked_sqlite_database_is_transient(tmp_path: Path) -> None:
    """Busy, as a dry pool is: a lock held past the wait (it said "unavailable")."""
    failure = database_errors.classify(
        OperationalError("INSERT", {}, locked_sqlite_error(tmp_path))
    )
    assert failure == database_errors.Failure(503, database_errors.BUSY)


def test_a_constraint_violated_is_no_database_failure(
    database_url: str, state_dir: Path, clock: Clock, monkeypatch: Any
) -> None:
    """A bug's IntegrityError is raised on, to the server's error handler, as before."""

    def violates(*args: Any, **kwargs: Any) -> None:
        raise IntegrityError("INSERT", {}, sqlite3.IntegrityError("UNIQUE constraint failed"))

    make_application(db.session_factory(database_url))
    monkeypatch.setattr(crud, "list_applications", violates)
    app = create_app(Settings(database_url=database_url, state_dir=state_dir), clock)
    with db.session_factory(database_url).begin() as session:
        token = crud.create_token(session, "admin", "test")
    with TestClient(app) as client, pytest.raises(IntegrityError):
        client.get("/v1/admin/applications", headers=bearer(token))
