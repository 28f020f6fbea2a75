"""Migration 0004 indexes ``seen_nonces.seen_at`` and ``rate_counters.window_start``, by
which the nonce prune and the rate counters' hourly prune delete: without them each prune
scanned its whole table (the rate counters' at almost every device request: 32 ms per
request with 300,000 counters on SQLite). SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from alembic import command
from sqlalchemy import delete, func, inspect, select, text
from tests.licensing.server_helpers import T0

from sklicense import crud, db, service
from sklicense.models import RateCounter, SeenNonce
from skruntime.licensing.protocol import TIMESTAMP_WINDOW_S

INDEXES = {
    "seen_nonces": ("seen_at", "ix_seen_nonces_seen_at"),
    "rate_counters": ("window_start", "ix_rate_counters_window_start"),
}


def indexes_on(url: str, table: str) -> list[str]:
    """The names of the indexes of ``table`` on exactly its pruned column."""
    column, _ = INDEXES[table]
    indexes = inspect(db.get_engine(url)).get_indexes(table)
    return [i["name"] for i in indexes if i["column_names"] == [column]]


def migrate(url: str, action: Any, revision: str) -> None:
    config = db.alembic_config(url)
    with db.get_engine(url).begin() as connection:
        config.attributes["connection"] = connection
        action(config, revision)


def count(sessions: Any, model: Any) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(model))


@pytest.mark.parametrize("table", INDEXES)
def test_the_index_exists_after_upgrade_head(database_url, table) -> None:
    assert db.current_revision(database_url) == db.head_revision()
    assert indexes_on(database_url, table) == [INDEXES[table][1]]


def test_upgrade_from_0003_with_rows_then_downgrade(database_url, sessions) -> None:
    """A server at 0003 holding nonces and rate counters upgrades (keeping them), prunes with
    the indexes, and downgrades again."""
    window = T0 - T0 % 60
    try:
        migrate(database_url, command.downgrade, "0003")
        assert [indexes_on(database_url, t) for t in INDEXES] == [[], []]
        with sessions.begin() as session:
            for i in range(5):
                service.remember_nonce(session, f"dev-{i}", f"{i:032x}", T0 - 1000 * i)
                session.add(RateCounter(key=f"usage:dev-{i}", window_start=window - 1800 * i))
        db.upgrade(database_url, "0004")
        assert db.current_revision(database_url) == "0004"
        assert [indexes_on(database_url, t) for t in INDEXES] == [[n] for _, n in INDEXES.values()]
        assert (count(sessions, SeenNonce), count(sessions, RateCounter)) == (5, 5)
        migrate(database_url, command.downgrade, "0003")
        assert [indexes_on(database_url, t) for t in INDEXES] == [[], []]
        assert (count(sessions, SeenNonce), count(sessions, RateCounter)) == (5, 5)
    finally:
        db.upgrade(database_url)  # the session's database, for the next tests
    assert [indexes_on(database_url, t) for t in INDEXES] == [[n] for _, n in INDEXES.values()]
    deleted = service.forget_expired_nonces(sessions, T0 + 2 * TIMESTAMP_WINDOW_S)
    assert deleted == 4  # the nonce seen at T0 is still of use
    assert crud.rate_hit(db.get_engine(database_url), "usage:new", T0) == 1
    assert count(sessions, RateCounter) == 3 + 1  # the windows over an hour old went


@pytest.mark.parametrize(
    "statement",
    [
        delete(SeenNonce).where(
            SeenNonce.id.in_(
                select(SeenNonce.id)
                .where(SeenNonce.seen_at < dt.datetime.fromtimestamp(T0, dt.UTC))
                .limit(service.NONCE_PRUNE_BATCH)
            )
        ),
        delete(RateCounter).where(RateCounter.window_start < T0 - 3600),
    ],
    ids=["nonces", "rate-counters"],
)
def test_the_prunes_search_the_indexes_on_sqlite(tmp_path, statement) -> None:
    """SQLite's plans of the prunes, on a database of their own (PostgreSQL's depend on the
    table's statistics)."""
    url = f"sqlite:///{tmp_path / 'plans.db'}"
    db.upgrade(url)
    engine = db.get_engine(url)
    sql = str(statement.compile(engine, compile_kwargs={"literal_binds": True}))
    with engine.connect() as connection:
        plan = [row[3] for row in connection.execute(text("EXPLAIN QUERY PLAN " + sql))]
    assert any("USING COVERING INDEX ix_" in s or "USING INDEX ix_" in s for s in plan), plan
    assert not any(step.startswith("SCAN ") for step in plan), plan
