"""Licence server fixtures: SQLite (tmp file) and a fresh PostgreSQL database per session.

PostgreSQL is required (CI starts it): when it is unreachable the fixture FAILS, it never
skips. ``SKLICENSE_TEST_POSTGRES`` overrides the maintenance URL
(default ``postgresql://postgres@127.0.0.1:5432/postgres``).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from tests.licensing.server_helpers import Clock

from sklicense import crud, db, service
from sklicense.crypto import create_signing_key
from sklicense.settings import Settings

PG_MAINTENANCE_URL = os.environ.get(
    "SKLICENSE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)
TABLES = (
    "audit_log",
    "admin_tokens",
    "rate_counters",
    "seen_nonces",
    "usage_reports",
    "licence_resends",
    "licences",
    "devices",
    "customers",
    "applications",
)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    import psycopg

    try:
        admin = psycopg.connect(PG_MAINTENANCE_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as e:
        pytest.fail(
            f"PostgreSQL is required by the licence server tests but {PG_MAINTENANCE_URL} is "
            f"unreachable ({e}). Start PostgreSQL (CI does) or set SKLICENSE_TEST_POSTGRES.",
            pytrace=False,
        )
    name = f"sklicense_test_{secrets.token_hex(6)}"
    admin.execute(f'CREATE DATABASE "{name}"')
    base = PG_MAINTENANCE_URL.rsplit("/", 1)[0]
    url = db.normalise_url(f"{base}/{name}")
    try:
        db.upgrade(url)
        yield url
    finally:
        db.get_engine(url).dispose()
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'sklicense.db'}"
    db.upgrade(url)
    return url


def clean(url: str) -> None:
    engine = db.get_engine(url)
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
        else:
            for table in TABLES:
                connection.execute(text(f"DELETE FROM {table}"))
            connection.execute(text("DELETE FROM sqlite_sequence"))  # AUTOINCREMENT counters


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    url = request.getfixturevalue(f"{request.param}_url")
    clean(url)
    # a fresh database: when this process last pruned its nonces belongs to the one before
    service._nonces_pruned_at.pop(url, None)
    return url


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    create_signing_key(tmp_path / "state" / "server.key")
    return tmp_path / "state"


@pytest.fixture
def settings(database_url: str, state_dir: Path) -> Settings:
    return Settings(database_url=database_url, state_dir=state_dir)


@pytest.fixture
def client(settings: Settings, clock: Clock):
    from fastapi.testclient import TestClient

    from sklicense.api.main import create_app

    with TestClient(create_app(settings, clock)) as test_client:
        yield test_client


@pytest.fixture
def sessions(database_url: str):
    return db.session_factory(database_url)


@pytest.fixture
def tokens(sessions: Any) -> dict[str, str]:
    with sessions.begin() as session:
        return {
            "admin": crud.create_token(session, "admin", "test"),
            "read-only": crud.create_token(session, "read-only", "test"),
        }


@pytest.fixture
def serve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``sklicense serve`` with the given options on an initialised SQLite database; uvicorn's
    start is recorded in ``serve.started``, not run."""
    import uvicorn
    from typer.testing import CliRunner

    from sklicense.cli import app

    for name in ("SKLICENSE_SIGNING_KEY_FILE", "SKLICENSE_STATE_DIR", "SKLICENSE_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    where = ["--state-dir", str(tmp_path / "state")]
    where += ["--database-url", f"sqlite:///{tmp_path / 'sklicense.db'}"]
    assert CliRunner().invoke(app, ["init", *where]).exit_code == 0
    started: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: started.append(kwargs))
    for name in ("SKLICENSE_DATABASE_URL", "SKLICENSE_STATE_DIR"):  # serve sets them
        monkeypatch.setenv(name, "")

    def run(*options: str) -> Any:
        return CliRunner().invoke(app, ["serve", *options, *where])

    run.started = started
    return run
