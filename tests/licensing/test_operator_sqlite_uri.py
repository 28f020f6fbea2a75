"""A SQLite database named by a SQLite URI (``sqlite:///file:/srv/sklicense.db?uri=true``, the
form SQLAlchemy documents for SQLite's URI options such as ``mode``). Until 2026-12-07 none
worked: ``sklicense db upgrade`` took ``file:/srv/sklicense.db`` for a relative path and said
"The folder <cwd>/file:/srv of the database file does not exist", and a relative URI
(``file:sklicense.db``) was migrated into a file named ``file:sklicense.db``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from sklicense import db
from sklicense.api.main import create_app
from sklicense.settings import Settings


@pytest.mark.parametrize(
    ("url", "file"),
    [
        ("sqlite:///file:{tmp}/a.db?uri=true", "a.db"),
        ("sqlite:///file:b.db?uri=true", "b.db"),  # relative to the current folder
        ("sqlite:///file:sub/m%C3%BCller.db?uri=true", "sub/müller.db"),
        ("sqlite:///file:{tmp}/c.db?cache=private&uri=true", "c.db"),
    ],
    ids=["absolute", "relative", "percent-encoded", "other-option"],
)
def test_a_sqlite_uri_is_migrated_served_and_watched_for_moves(
    tmp_path: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch, url: str, file: str
) -> None:
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    monkeypatch.chdir(work)
    url = url.format(tmp=work)
    path = work / file
    assert db.sqlite_file(url) == path
    db.upgrade(url)
    assert path.is_file()
    assert [p.name for p in work.rglob("*") if p.name.startswith("file:")] == []
    db.check_migrated(url)
    app = create_app(Settings(database_url=url, state_dir=state_dir))
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            assert client.get("/v1/health").json() == {"status": "ok"}
            os.replace(path, work / "moved.db")  # the server's file moved away
            gone = client.get("/v1/health")
            assert gone.status_code == 503 and "was moved" in gone.json()["detail"]
    finally:
        db.get_engine(url).dispose()
        db.get_engine(url, Settings().database_pool_timeout_s).dispose()


def test_a_missing_uri_file_is_said_so_and_not_created(tmp_path: Path) -> None:
    url = f"sqlite:///file:{tmp_path}/missing.db?uri=true"
    with pytest.raises(db.DatabaseNotMigratedError, match=r"missing\.db does not exist"):
        db.check_migrated(url)
    with pytest.raises(db.DatabaseNotMigratedError, match="nowhere of the database file"):
        db.upgrade(f"sqlite:///file:{tmp_path}/nowhere/x.db?uri=true")
    assert list(tmp_path.iterdir()) == []


def test_an_in_memory_uri_has_no_file() -> None:
    assert db.sqlite_file("sqlite:///file:x.db?mode=memory&uri=true") is None
    assert db.sqlite_file("sqlite:///file::memory:?uri=true") is None
