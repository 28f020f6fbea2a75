"""A LINUX device licensed while the server had no KEK for the application got a licence
without one: ``kek()`` then raised "Import the application's key ..., then renew the licence"
at every load, also after the administrator imported it, until the licence fell due for
renewal (a year's licence: 335 days; one at the contract end: never), since nothing renewed a
valid licence (until 2026-12-07). Now ``kek()`` has the server answer the licence again, which
wraps the KEK it has now, uncharged, at most once per ``retry_seconds`` per process. Against
the real server app on SQLite."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from tests.licensing.server_helpers import APP, Clock, device_client, random_kek, sqlite_server

from sklicense import crud, db
from skruntime.errors import ClockRollbackError, LicenceError
from skruntime.licensing.protocol import unb64


def granted(path: Path) -> tuple[int, int]:
    """The number of licences and the inferences granted to the customer."""
    with sqlite3.connect(path) as connection:
        count = connection.execute("SELECT count(*) FROM licences").fetchone()[0]
        total = connection.execute("SELECT sum(inferences_granted) FROM customers").fetchone()[0]
    return count, total


def device(
    client: Any, tmp_path: Path, clock: Any, inferences: int, transport: Any = None, **options: Any
) -> Any:
    """A process of the device (state in ``tmp_path/device``) talking to the server app behind
    ``client`` (or through ``transport``), asking ``inferences`` per licence, retrying after
    300 s; ``options`` add or replace client options."""
    pinned = unb64(client.get("/v1/public-key").json()["public_key"])
    return device_client(
        "http://testserver",
        transport or client._transport,
        pinned,
        tmp_path / "device",
        clock,
        **({"overlap_seconds": 30 * 86400, "retry_seconds": 300} | options),
        requested_inferences=inferences,
    )


def test_a_licence_without_kek_gets_it_once_imported_uncharged(
    tmp_path: Path, state_dir: Path, clock: Clock
) -> None:
    with sqlite_server(tmp_path, state_dir, clock, default_licence_seconds=365 * 86400) as (
        client,
        path,
    ):

        def process() -> Any:
            return device(client, tmp_path, clock, 1000)

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


def test_a_server_older_than_supersedes_is_not_charged_for_the_kek(
    tmp_path: Path, state_dir: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """A server that refuses ``supersedes`` cannot answer the licence again: asked without the
    field, it issued a new licence, charged, at every ``kek()`` retry_seconds apart (without a
    KEK still, every one of them). Now nothing more is asked, with a warning."""
    from tests.licensing.test_resend_superseded import OlderServer

    with sqlite_server(tmp_path, state_dir, clock) as (client, path):
        older = OlderServer(client._transport, client.app.state.signing_key, lost=0)
        runtime = device(client, tmp_path, clock, 100, older, overlap_seconds=86400)
        first = runtime.ensure_licence()
        for _ in range(3):
            with pytest.raises(LicenceError, match="carries no key-encryption key"):
                runtime.kek()
            clock.now += 301
        assert runtime.ensure_licence().licence_id == first.licence_id
        runtime.close()
        assert granted(path) == (1, 100)
        assert "does not know the supersedes field" in caplog.text
        assert not (tmp_path / "device" / "pending_demo-app.json").exists()


def test_a_licence_renewed_with_kek_by_another_process_is_taken_not_charged(
    tmp_path: Path, state_dir: Path, clock: Clock
) -> None:
    """Another process used up the licence and renewed, once the KEK was imported: the
    renewal, cached, carries the KEK. A process still on the used-up licence, asked for the
    KEK, had the server answer its own licence again, reported used up, so not answerable:
    a third licence was charged. Now it takes the cached one."""
    with sqlite_server(tmp_path, state_dir, clock, default_licence_seconds=365 * 86400) as (
        client,
        path,
    ):

        def process() -> Any:
            return device(client, tmp_path, clock, 10)

        first, second = process(), process()
        licence = first.ensure_licence()
        assert second.ensure_licence().licence_id == licence.licence_id
        kek = random_kek()
        sessions = db.session_factory(f"sqlite:///{path}")
        with sessions.begin() as session:
            crud.import_kek(session, crud.get_application(session, APP), kek, "test")
        second.consume(10)
        second.consume(1)  # used up: renewed, with the KEK, its report of the first sent
        renewed = second.ensure_licence()
        assert renewed.licence_id != licence.licence_id and renewed.wrapped_kek is not None
        assert first.kek() == kek
        assert first.ensure_licence().licence_id == renewed.licence_id
        for done in (first, second):
            done.close()
        assert granted(path) == (2, 20)


def test_a_renewal_issued_ahead_of_the_clock_stays_cached(
    tmp_path: Path, state_dir: Path, clock: Clock
) -> None:
    """The device's clock is behind the server's by more than clock_tolerance: the renewal
    is cached with the licence it replaces beside it, and that one stays in use meanwhile.
    Answered again with the KEK, that licence was written over the renewal (paid for), which
    every process then lost: the next renewal drew another allowance."""
    with sqlite_server(tmp_path, state_dir, clock, default_licence_seconds=7 * 86400) as (
        client,
        path,
    ):
        runtime = device(
            client,
            tmp_path,
            lambda: clock.now - 120,
            100,
            overlap_seconds=86400,
            clock_tolerance=60,
        )
        with pytest.raises(ClockRollbackError):
            runtime.ensure_licence()  # issued ahead of this clock: cached, taken at its time
        clock.now += 120
        first = runtime.ensure_licence()
        kek = random_kek()
        sessions = db.session_factory(f"sqlite:///{path}")
        with sessions.begin() as session:
            crud.import_kek(session, crud.get_application(session, APP), kek, "test")
        clock.now = first.expires_at - 86400 + 200
        assert runtime.ensure_licence().licence_id == first.licence_id  # renewed, ahead
        cache = tmp_path / "device" / "licence_demo-app.json"
        renewal = json.loads(cache.read_text())["licence"]["licence_id"]
        assert renewal != first.licence_id
        assert runtime.kek() == kek
        assert json.loads(cache.read_text())["licence"]["licence_id"] == renewal
        clock.now += 120
        assert runtime.ensure_licence().licence_id == renewal
        runtime.close()
        assert granted(path) == (2, 200)
