"""SQLite: the key lookup that answers an unsigned device request takes no write lock (a plain
``BEGIN``), while transactions that write still start with ``BEGIN IMMEDIATE``."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select
from sqlalchemy.engine import make_url
from tests.licensing.server_helpers import T0, FakeDevice

from sklicense import db
from sklicense.models import Device


@contextmanager
def another_writer(url: str) -> Iterator[None]:
    """Another connection (another server process, the admin CLI) in a write transaction."""
    connection = sqlite3.connect(make_url(url).database, isolation_level=None)
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        connection.execute("ROLLBACK")
        connection.close()


def finishes_while_locked(work: Callable[[], Any], seconds: float) -> bool:
    """Whether ``work()`` returns within ``seconds`` (it is left running otherwise: the lock's
    release lets it finish)."""
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(seconds)
    return not thread.is_alive()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("path", ["/v1/licences", "/v1/usage"])
def test_an_unsigned_request_does_not_wait_for_a_writer(database_url, client, path) -> None:
    """The lookup began with ``BEGIN IMMEDIATE``: it waited for (and then held up) every
    writer, though anyone can send unsigned requests as fast as they like."""
    device = FakeDevice("dev-1")
    body = (
        device.licence_request(42, T0)
        if path == "/v1/licences"
        else device.usage_report("lic-1", "r1", 1, T0)
    )
    forged = device.headers(body, Ed25519PrivateKey.generate())
    answers: list[Any] = []
    with another_writer(database_url):
        assert finishes_while_locked(
            lambda: answers.append(client.post(path, json=body, headers=forged)), 10
        )
    expected = "bad_signature" if path == "/v1/licences" else "unknown_device"
    assert (answers[0].status_code, answers[0].json()["reason"]) == (403, expected)


def test_a_writing_transaction_still_takes_the_write_lock(sqlite_url) -> None:
    """After a lookup's connection went back to the pool, a transaction on it begins
    ``IMMEDIATE`` again: it waits for the other writer."""
    sessions = db.session_factory(sqlite_url)
    with db.reading(sessions) as session:
        assert session.get(Device, "dev-1") is None

    def write() -> None:
        with sessions.begin() as session:
            session.execute(select(Device.id))

    with another_writer(sqlite_url):
        assert not finishes_while_locked(write, 0.5)
