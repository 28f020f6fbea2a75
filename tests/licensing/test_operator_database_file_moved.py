"""A SQLite database file moved or deleted while the server runs (an operator's ``mv``, a
restore done the wrong way round). Before: every write failed 500 "the licence database is
read-only to this server: give the server's user write access" (SQLite's
``SQLITE_READONLY_DBMOVED``), ``GET /v1/health`` answered ``ok``, and the next connection the
pool opened created an empty file at the path, after which every request was told to run
``sklicense db upgrade``. Now the moved file is said as such, the pool drops its connections,
no empty file is created, health fails, and the file put back serves again."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from tests.licensing.server_helpers import Clock, FakeDevice, sqlite_server

from sklicense import db
from sklicense.api import database_errors


@pytest.fixture
def server(tmp_path: Path, state_dir: Path, clock: Clock) -> Iterator[tuple[TestClient, Path]]:
    with sqlite_server(tmp_path, state_dir, clock, inference_quota=1000, max_devices=10) as served:
        yield served


def ask(client: TestClient, clock: Clock) -> tuple[int, dict]:
    device = FakeDevice()
    body = device.licence_request(42, clock.now, requested_inferences=10)
    answer = client.post("/v1/licences", json=body, headers=device.headers(body))
    return answer.status_code, answer.json()


def test_a_database_file_moved_away_is_said_so_and_not_created_again(server, clock) -> None:
    client, path = server
    assert ask(client, clock)[0] == 200
    moved = path.with_name("moved.db")
    path.rename(moved)

    status, body = ask(client, clock)
    assert status == 503, body
    assert body["detail"].startswith("the licence database file was moved, replaced or deleted")
    answers = [ask(client, clock) for _ in range(3)]
    assert {(s, b["detail"]) for s, b in answers} == {(500, database_errors.CANNOT_OPEN)}
    assert not path.exists(), "an empty database was created at the path"
    health = client.get("/v1/health")
    assert health.status_code >= 500
    assert "NOT_MIGRATED" not in health.text and "read-only" not in health.text

    moved.rename(path)  # put back: the server serves again, without a restart
    assert ask(client, clock)[0] == 200
    assert client.get("/v1/health").json() == {"status": "ok"}


def test_a_migration_still_creates_the_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    with db.get_engine(url).connect():  # the engine has opened a file before
        pass
    db.get_engine(url).dispose()
    (tmp_path / "new.db").unlink()
    db.upgrade(url)  # opens it anew: may create it
    assert db.current_revision(url) == db.head_revision()


def test_a_database_restored_over_the_file_is_served_again(server, clock) -> None:
    """A backup moved over the database while the server runs: before, every request was
    answered 500 "read-only" until the server was restarted; now the restored database is
    served (the pool's connections to the old file are dropped as they are taken: at first
    one 503, until the review of 2c71203)."""
    client, path = server
    assert ask(client, clock)[0] == 200
    backup = path.with_name("backup.db")
    with sqlite3.connect(path) as live, sqlite3.connect(backup) as copy:
        live.backup(copy)
    os.replace(backup, path)
    answers = [ask(client, clock)[0] for _ in range(4)]
    assert answers == [200, 200, 200, 200]
