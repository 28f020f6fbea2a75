"""A request the database fails (here: its PostgreSQL database is gone) is answered 503 with
``Retry-After`` and the reason logged, not a bare 500 "Internal Server Error" that neither a
load balancer's health check nor an admin could act on."""

from __future__ import annotations

import logging
import secrets
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session
from tests.licensing.conftest import PG_MAINTENANCE_URL
from tests.licensing.server_helpers import (
    Clock,
    FakeDevice,
    bearer,
    make_application,
    make_customer,
)

from sklicense import crud, db
from sklicense.api.main import create_app
from sklicense.settings import Settings

DETAIL = "the licence database is unavailable (the server log says why): retry later"


@pytest.fixture
def dropped(state_dir: Path) -> Iterator[tuple[TestClient, str, str]]:
    """A client of a server whose PostgreSQL database was dropped after it started, an admin
    token of it, and the database's name."""
    name = f"sklicense_gone_{secrets.token_hex(6)}"
    with psycopg.connect(PG_MAINTENANCE_URL, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        url = db.normalise_url(f"{PG_MAINTENANCE_URL.rsplit('/', 1)[0]}/{name}")
        try:
            db.upgrade(url)
            sessions = db.session_factory(url)
            make_application(sessions)
            make_customer(sessions)
            with sessions.begin() as session:
                token = crud.create_token(session, "admin", "test")
            app = create_app(Settings(database_url=url, state_dir=state_dir), Clock())
            with TestClient(app, raise_server_exceptions=False) as client:
                assert client.get("/v1/health").status_code == 200
                db.get_engine(url).dispose()
                admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
                yield client, token, name
        finally:
            db.get_engine(url).dispose()
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_requests_the_database_fails_are_503(dropped: Any, caplog: Any) -> None:
    client, token, name = dropped
    device = FakeDevice("dev-1")
    body = device.licence_request(42, Clock().now)
    with caplog.at_level(logging.ERROR, logger="sklicense.api.main"):
        answers = {
            "GET /v1/health": client.get("/v1/health"),
            "POST /v1/licences": client.post(
                "/v1/licences", json=body, headers=device.headers(body)
            ),
            "GET /v1/admin/customers": client.get("/v1/admin/customers", headers=bearer(token)),
        }
    for response in answers.values():
        assert (response.status_code, response.json()) == (503, {"detail": DETAIL})
        assert response.headers["Retry-After"] == "10"
    logged = [r.getMessage() for r in caplog.records if r.name == "sklicense.api.main"]
    assert len(logged) == 3
    for line, request in zip(logged, answers, strict=True):
        assert line.startswith(f"{request} failed, the database is unavailable: ")
        assert f'database "{name}" does not exist' in line


def test_a_database_error_without_a_message_is_503_too(
    settings: Settings, clock: Any, monkeypatch: Any, caplog: Any
) -> None:
    """A driver error with an empty message was an IndexError in the handler itself: a bare
    500, the database's failure hidden behind it."""

    def fails(*args: Any, **kwargs: Any) -> None:
        raise OperationalError("SELECT 1", {}, sqlite3.OperationalError())

    app = create_app(settings, clock)
    with TestClient(app, raise_server_exceptions=False) as client:
        monkeypatch.setattr(Session, "execute", fails)
        with caplog.at_level(logging.ERROR, logger="sklicense.api.main"):
            response = client.get("/v1/health")
    assert (response.status_code, response.json()) == (503, {"detail": DETAIL})
    assert response.headers["Retry-After"] == "10"
    (line,) = [r.getMessage() for r in caplog.records if r.name == "sklicense.api.main"]
    assert line == (
        "GET /v1/health failed, the database is unavailable: OperationalError (no message)"
    )
