"""The database's life cycle as an operator runs it, on SQLite and PostgreSQL: ``sklicense db
upgrade`` started twice at once (each replica's start-up), from every older revision with rows
in every table, killed part way, kept waiting for a lock, and run by a PostgreSQL user that may
not create tables."""

from __future__ import annotations

import datetime as dt
import secrets
import signal
import subprocess
import sys
from typing import Any
from unittest.mock import ANY

import psycopg
import pytest
from sqlalchemy import MetaData, Table, func, inspect, make_url, select, text
from tests.licensing.conftest import PG_MAINTENANCE_URL
from tests.licensing.test_migration_round_trip import empty_url  # noqa: F401 (fixture)

from sklicense import db
from sklicense.models import Base

SLOW_UPGRADE = """
import sys, time
from sqlalchemy import event
from sklicense import db

def slow(conn, cursor, statement, *args):
    if sys.argv[3] in statement:
        print("migrating", flush=True)
        time.sleep(float(sys.argv[2]))

event.listen(db.get_engine(sys.argv[1]), "before_cursor_execute", slow)
db.upgrade(sys.argv[1])
"""
"""``db.upgrade(URL)`` in a process of its own (Alembic's ``op`` and ``context`` are one per
process) that pauses for SECONDS within its transaction, before the statement that contains
TEXT: ``python -c SLOW_UPGRADE URL SECONDS TEXT``."""


def paused_upgrade(url: str, seconds: float, statement: str) -> subprocess.Popen[str]:
    """:data:`SLOW_UPGRADE` started, once it is paused."""
    upgrade = subprocess.Popen(
        [sys.executable, "-c", SLOW_UPGRADE, url, str(seconds), statement],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert upgrade.stdout is not None and upgrade.stdout.readline() == "migrating\n"
    return upgrade


def test_two_upgrades_at_once_both_succeed(empty_url: str) -> None:  # noqa: F811
    """The second upgrade waits for the first to commit, then finds the database migrated. On
    PostgreSQL it created the tables too, and failed on the first one's commit with ``duplicate
    key value violates unique constraint "pg_type_typname_nsp_index"``."""
    first = paused_upgrade(empty_url, 2, "CREATE TABLE applications")
    try:
        db.upgrade(empty_url)
    finally:
        assert first.wait(timeout=60) == 0
    db.check_migrated(empty_url)


AT = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)
ROWS: dict[str, list[dict[str, Any]]] = {
    "applications": [
        {"name": "app", "kek": b"\x01" * 32, "models": ["m1"], "created_at": AT},
        {"name": "open", "kek": None, "models": None, "created_at": AT},
    ],
    "customers": [
        {
            "id": 7,
            "name": "Acme",
            "contract_end": AT,
            "default_licence_seconds": 86400,
            "max_devices": 2,
            "inference_quota": 1000,
            "inferences_granted": 10,
            "created_at": AT,
        },
        {
            "id": 2**62,
            "name": "Quota",
            "contract_end": None,
            "default_licence_seconds": 60,
            "max_devices": 1,
            "inference_quota": 5,
            "inferences_granted": 0,
            "created_at": AT,
        },
    ],
    "devices": [
        {
            "id": f"dev-{status}",
            "customer_id": 7,
            "signing_public_key": "s",
            "exchange_public_key": "x",
            "duration_override_seconds": 120,
            "status": status,
            "created_at": AT,
        }
        for status in ("active", "revoked")
    ],
    "licences": [
        {
            "id": "lic-1",
            "device_id": "dev-active",
            "customer_id": 7,
            "application_id": 1,
            "models": ["m1"],
            "issued_at": AT,
            "expires_at": AT,
            "inferences": 100,
            "request_nonce": "n1",
        },
    ],
    "usage_reports": [
        {
            "device_id": "dev-active",
            "report_id": f"r{i}",
            "licence_id": "lic-1",
            "counter": i,
            "received_at": AT,
        }
        for i in range(3)
    ],
    "seen_nonces": [{"device_id": "dev-active", "nonce": f"n{i}", "seen_at": AT} for i in range(3)],
    "rate_counters": [
        {"key": f"device:{i}", "window_start": 1000 + i, "count": 3} for i in range(3)
    ],
    "admin_tokens": [
        {"token_sha256": role[0] * 64, "role": role, "created_at": AT}
        for role in ("admin", "read-only")
    ],
    "audit_log": [
        {"at": AT, "actor": "cli", "action": "token.create", "target": f"token:{i}", "detail": {}}
        for i in (1, 2)
    ],
}
"""A row or more in every table, with the columns of the head revision; one of an older
revision gets those it has."""


def tables(url: str) -> list[Table]:
    """The database's tables but Alembic's, each after those its foreign keys name."""
    metadata = MetaData()
    metadata.reflect(db.get_engine(url))
    return [t for t in metadata.sorted_tables if t.name != "alembic_version"]


def schema(url: str) -> dict[str, Any]:
    """Every table's columns (in any order: a migration adds them last), keys, constraints and
    indexes, as the database reports them."""
    inspector = inspect(db.get_engine(url))
    return {
        name: [
            sorted((c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(name)),
            inspector.get_pk_constraint(name),
            sorted(map(str, inspector.get_foreign_keys(name))),
            sorted(map(str, inspector.get_unique_constraints(name))),
            sorted(map(str, inspector.get_check_constraints(name))),
            sorted(map(str, inspector.get_indexes(name))),
        ]
        for name in inspector.get_table_names()
    }


@pytest.mark.parametrize("old", ["0001", "0002", "0003", "0004"])
def test_upgrade_from_each_revision_keeps_every_row_and_constraint(
    empty_url: str,  # noqa: F811
    old: str,
) -> None:
    """Rows of every table written at an older revision are all there after ``db upgrade``,
    the columns added since empty, and the schema is the one the models declare, CHECK
    constraints included, which Alembic's autogenerate comparison leaves out (the SQLite table
    that 0003 copies keeps them)."""
    db.upgrade(empty_url, old)
    engine = db.get_engine(empty_url)
    sqlite = engine.dialect.name == "sqlite"
    old_tables = tables(empty_url)
    written = {
        table.name: [
            {
                key: value.replace(tzinfo=None)
                if sqlite and isinstance(value, dt.datetime)
                else value
                for key, value in row.items()
                if key in table.c
            }
            for row in ROWS[table.name]
        ]
        for table in old_tables
    }
    with engine.begin() as connection:
        for table in old_tables:
            connection.execute(table.insert(), written[table.name])
    db.upgrade(empty_url)
    db.check_migrated(empty_url)
    upgraded = tables(empty_url)
    with engine.connect() as connection:
        for table in upgraded:  # a table added since holds no row
            rows = connection.execute(select(table).order_by(*table.primary_key)).mappings()
            expected = written.get(table.name, [])
            kept = [{k: v for k, v in r.items() if k in (expected or [{}])[0]} for r in rows]
            assert kept == expected, table.name
    upgraded_schema = schema(empty_url)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    assert upgraded_schema == schema(empty_url) | {"alembic_version": ANY}


def test_an_upgrade_killed_part_way_leaves_the_old_revision(empty_url: str) -> None:  # noqa: F811
    """``kill -9`` of ``db upgrade`` between two statements of a migration (0004, one index of
    its two made) leaves the database as it was, rows and revision, and the next upgrade
    finishes: each upgrade is one transaction."""
    db.upgrade(empty_url, "0003")
    table = next(t for t in tables(empty_url) if t.name == "rate_counters")
    with db.get_engine(empty_url).begin() as connection:
        connection.execute(table.insert(), ROWS["rate_counters"])
    upgrade = paused_upgrade(empty_url, 60, "CREATE INDEX ix_rate_counters_window_start")
    upgrade.kill()
    assert upgrade.wait(timeout=60) == -signal.SIGKILL
    assert db.current_revision(empty_url) == "0003"
    assert "ix_seen_nonces_seen_at" not in str(schema(empty_url)["seen_nonces"])
    db.upgrade(empty_url)
    db.check_migrated(empty_url)
    with db.get_engine(empty_url).connect() as connection:
        assert connection.execute(select(func.count()).select_from(table)).scalar() == 3


def test_an_upgrade_kept_waiting_for_a_lock_says_so(
    empty_url: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A transaction that holds the tokens table (SQLite: the write lock) past the admin
    timeout makes the upgrade fail saying that, what may hold it, and that nothing changed;
    it said "the database refused: database is locked" (or PostgreSQL's "canceling statement
    due to lock timeout") with advice about the URL and the disk."""
    db.upgrade(empty_url, "0002")
    monkeypatch.setattr(db, "ADMIN_TIMEOUT_S", 0.5)
    with db.get_engine(empty_url).connect() as holder:
        holder.execute(text("SELECT count(*) FROM admin_tokens"))
        with pytest.raises(db.DatabaseNotMigratedError) as refused:
            db.upgrade(empty_url)
    assert str(refused.value) == (
        f"The database {db.safe_url(empty_url)} stayed locked for 0.5 s by another connection: "
        "another `sklicense db upgrade` still migrating it, or a transaction of a server or of a "
        "database session (PostgreSQL's pg_stat_activity lists them). Nothing was changed: run "
        "`sklicense db upgrade` again once it has ended."
    )
    assert db.current_revision(empty_url) == "0002"
    db.upgrade(empty_url)
    db.check_migrated(empty_url)


@pytest.mark.parametrize("empty_url", ["postgres"], indirect=True)
def test_a_postgres_user_that_may_not_create_tables_is_told_what_to_do(
    empty_url: str,  # noqa: F811
) -> None:
    """PostgreSQL 15 and later let no user but the database's owner create tables in its
    public schema (as the REVOKE makes older ones): the upgrade names the refusal and the fix,
    instead of advice about the URL and the disk."""
    with db.get_engine(empty_url).begin() as connection:
        connection.execute(text("REVOKE CREATE ON SCHEMA public FROM PUBLIC"))
    role = f"sklicense_guest_{secrets.token_hex(4)}"
    guest_url = make_url(empty_url).set(username=role).render_as_string(hide_password=False)
    with psycopg.connect(PG_MAINTENANCE_URL, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE ROLE "{role}" LOGIN')
        try:
            with pytest.raises(db.DatabaseNotMigratedError) as refused:
                db.upgrade(guest_url)
        finally:
            db.get_engine(guest_url).dispose()
            admin.execute(f'DROP ROLE "{role}"')
    assert str(refused.value) == (
        f"The PostgreSQL user of {db.safe_url(guest_url)} may not change the licence "
        "tables (permission denied for schema public): run `sklicense db upgrade` as the user "
        "that owns the database and its tables (PostgreSQL 15 and later let only the database's "
        "owner create tables in its public schema), or GRANT CREATE on the schema to this user."
    )
