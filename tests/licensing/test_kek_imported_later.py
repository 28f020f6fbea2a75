"""A LINUX device licensed while the server had no KEK for the application got a licence
without one: ``kek()`` then raised "Import the application's key ..., then renew the licence"
at every load, also after the administrator imported it, until the licence fell due for
renewal (a year's licence: 335 days; one at the contract end: never), since nothing renewed a
valid licence (until 2026-12-07). Now ``kek()`` has the server answer the licence again, which
wraps the KEK it has now, uncharged, at most once per ``retry_seconds`` per process. Against
the real server app on SQLite."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from tests.licensing.server_helpers import APP, Clock, device_client, random_kek, sqlite_server

from sklicense import crud, db
from skruntime.errors import LicenceError
from skruntime.licensing.protocol import unb64


def granted(path: Path) -> tuple[int, int]:
    """The number of licences and the inferences granted to the customer."""
    with sqlite3.connect(path) as connection:
        count = connection.execute("SELECT count(*) FROM licences").fetchone()[0]
        total = connection.execute("SELECT sum(inferences_granted) FROM customers").fetchone()[0]
    return count, total


def test_a_licence_without_kek_gets_it_once_imported_uncharged(
    tmp_path: Path, state_dir: Path, clock: Clock
) -> None:
    with sqlite_server(tmp_path, state_dir, clock, default_licence_seconds=365 * 86400) as (
        client,
        path,
    ):
        pinned = unb64(client.get("/v1/public-key").json()["public_key"])

        def process() -> Any:
            return device_client(
                "http://testserver",
                client._transport,
                pinned,
                tmp_path / "device",
                clock,
                overlap_seconds=30 * 86400,
                retry_seconds=300,
                requested_inferences=1000,
            )

        runtime = process()
        with pytest.raises(LicenceError, match="carries no key-encryption key"):
            runtime.kek()  # the server has no KEK yet: asked again, answered without one
        first = runtime.ensure_licence()
        runtime.consume(3)
        assert granted(path) == (1, 1000)
        kek = random_kek()
        sessions = db.session_factory(f"sqlite:///{path}")
        with sessions.begin() as session:
            crud.import_kek(session, crud.get_application(session, APP), kek, "test")
        clock.now += 60
        with pytest.raises(LicenceError, match="carries no key-encryption key"):
            runtime.kek()  # asked within retry_seconds already
        other = process()  # another process asks at once: nothing is charged for it
        assert other.kek() == kek
        clock.now += 300
        assert runtime.kek() == kek  # the other process's answer, from the cache
        assert runtime.ensure_licence().licence_id == first.licence_id
        assert granted(path) == (1, 1000)  # the same licence: nothing more drawn
        runtime.consume(2)
        for done in (runtime, other):
            done.close()
        third = process()
        assert third.kek() == kek
        assert third.ensure_licence().licence_id == first.licence_id
        third.close()
        assert granted(path) == (1, 1000)
        with sqlite3.connect(path) as connection:  # the counter went on across the re-answer
            assert connection.execute("SELECT max(counter) FROM usage_reports").fetchone() == (5,)
