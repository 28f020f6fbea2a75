"""An admin command kept waiting on a lock that another connection holds says so, on SQLite
and PostgreSQL, and says to run it again: it got the generic "the database refused: database is
locked. Check --database-url ..., that the server is reachable, and that the database file and
its folder are writable with space left", advice about a fault it did not have."""

from __future__ import annotations

import sys

import pytest
from sqlalchemy import text

from sklicense import crud, db
from sklicense.cli import CLI_ACTOR, main

WAIT_S = 0.3


def test_a_lock_held_past_the_wait_is_named_with_what_to_do(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with db.session_factory(database_url).begin() as session:
        crud.create_customer(
            session,
            CLI_ACTOR,
            id=1,
            name="a",
            inference_quota=5,
            max_devices=1,
            default_licence_seconds=86400,
        )
    engine = db._engine
    monkeypatch.setattr(db, "_engine", lambda url, timeout_s: engine(url, WAIT_S))
    monkeypatch.setattr(db, "ADMIN_TIMEOUT_S", WAIT_S)
    argv = ["sklicense", "customer", "edit", "--id", "1", "--name", "b"]
    monkeypatch.setattr(sys, "argv", [*argv, "--database-url", database_url])
    with engine(db.normalise_url(database_url), 30.0).connect() as holder, holder.begin():
        # SQLite: the BEGIN IMMEDIATE of the holder's transaction takes the write lock
        if holder.dialect.name == "postgresql":  # a lock on the row the edit changes
            holder.execute(text("SELECT name FROM customers WHERE id = 1 FOR UPDATE"))
        with pytest.raises(SystemExit) as stopped:
            main()
    assert stopped.value.code == 1
    assert capsys.readouterr().err == (
        f"Error: the database stayed locked for {WAIT_S} s by another connection: another "
        "sklicense command, or a transaction of the server or of a database session "
        "(PostgreSQL's pg_stat_activity lists them). Nothing was changed: run the command again "
        "once it has ended.\n"
    )
    with db.session_factory(database_url)() as session:
        assert crud.list_customers(session)[0].name == "a"
