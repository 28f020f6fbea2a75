"""How the server answers a request the database failed: 503 with ``Retry-After`` when a retry
can succeed by itself, 500 with what an administrator must do when it never will.

Transient (503): a SQLite file moved or deleted under the server (its connections are
dropped, so the file put back serves again); no pooled connection free within the pool
timeout, a lock another connection held past the lock wait (SQLite's busy timeout,
PostgreSQL's ``lock_timeout``): "busy"; a connection refused or dropped, a PostgreSQL
deadlock, serialization failure, lock or statement timeout, shutdown or connection limit; and
any other ``OperationalError``
(a failure of the database's operation rather than of the request). Permanent (500): SQLite
"no such table" or PostgreSQL ``undefined_table`` (the database was never migrated, or is
another one), a database the server may not write (SQLite read-only, PostgreSQL read-only
transaction or missing privilege), a SQLite file that is not a database or is damaged, a full
disk. The handler (:func:`sklicense.api.main.database_failed`) logs the cause; the detail
answered says only what to do: anyone can send a device request.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

RETRY_AFTER_S = 10
"""The ``Retry-After`` of a request answered 503 because the database failed it."""
UNAVAILABLE = "the licence database is unavailable (the server log says why): retry later"
BUSY = (
    "the licence database is busy: no database connection, turn to write or lock was free in "
    "time (the server log says more): retry later"
)
NOT_MIGRATED = (
    "the licence database lacks this server's tables: it was not migrated, or the server is "
    "configured with another database. Run `sklicense db upgrade` (or `sklicense init`) with the "
    "server's --database-url / SKLICENSE_DATABASE_URL; the server log names what is missing"
)
READ_ONLY = (
    "the licence database is read-only to this server: give the server's user write access "
    "(SQLite: the database file and its folder; PostgreSQL: connect to the primary, not a "
    "read-only standby); the server log says more"
)
NO_PRIVILEGE = (
    "the PostgreSQL user of this server lacks privileges on the licence tables: grant them, or "
    "connect as the user that ran `sklicense db upgrade`; the server log says which"
)
NOT_A_DATABASE = (
    "the licence database file is not a SQLite database, or is damaged: check that "
    "--database-url / SKLICENSE_DATABASE_URL names the file `sklicense init` created, or "
    "restore it from a backup; the server log says more"
)
CANNOT_OPEN = (
    "the licence database file cannot be opened: check that it and its folder exist and that "
    "the server's user may read and write them; the server log says more"
)
DISK_FULL = "the licence database's disk is full: free space on it; the server log says more"
MOVED = (
    "the licence database file was moved, replaced or deleted while the server ran: retry "
    "later; its administrator must put the file back at its path (restore it from a backup "
    "with the server stopped); the server log says more"
)

_SQLITE_PERMANENT = {
    "SQLITE_READONLY": READ_ONLY,
    "SQLITE_NOTADB": NOT_A_DATABASE,
    "SQLITE_CORRUPT": NOT_A_DATABASE,
    "SQLITE_CANTOPEN": CANNOT_OPEN,
    "SQLITE_FULL": DISK_FULL,
}
"""SQLite's primary result codes (``sqlite_errorname`` up to its first ``_`` suffix) that no
retry fixes."""
_SQLITE_BUSY = ("SQLITE_BUSY", "SQLITE_LOCKED")
"""SQLite's codes of a lock another connection held past the busy timeout: busy, as the pool."""
_POSTGRES_LOCK_TIMEOUT = "55P03"
"""PostgreSQL's lock_not_available: a lock another transaction held past ``lock_timeout``."""
_SQLITE_NOT_MIGRATED = ("no such table", "no such column")
"""Messages of SQLite's generic ``SQLITE_ERROR`` that say the schema is not this server's."""
_POSTGRES_PERMANENT = {
    "42P01": NOT_MIGRATED,  # undefined_table
    "42703": NOT_MIGRATED,  # undefined_column
    "42501": NO_PRIVILEGE,  # insufficient_privilege
    "25006": READ_ONLY,  # read_only_sql_transaction
    "53100": DISK_FULL,  # disk_full
}
"""PostgreSQL SQLSTATEs that no retry fixes."""
_POSTGRES_TRANSIENT = ("08", "40001", "40P01", "53300", "55P03", "57014", "57P01", "57P03")
"""PostgreSQL SQLSTATEs (or classes) a retry can get past: connection exceptions,
serialization failure, deadlock, too many connections, lock not available, statement timeout,
shutdown, starting up. A connection that fails before the server answers has no SQLSTATE."""


@dataclass(frozen=True)
class Failure:
    """How a database failure is answered: its status (503: retry later) and detail."""

    status: int
    detail: str


def classify(error: SQLAlchemyError) -> Failure | None:
    """The answer to ``error``, or None when it is no failure of the database but of the
    request (a constraint violated, a statement the database refused: a bug)."""
    if isinstance(error, PoolTimeoutError):
        return Failure(503, BUSY)
    if not isinstance(error, DBAPIError):
        return None
    cause = error.orig
    if isinstance(cause, sqlite3.Error):
        name = getattr(cause, "sqlite_errorname", "")
        if name == "SQLITE_READONLY_DBMOVED":  # the engine drops its connections: not for good
            return Failure(503, MOVED)
        primary = "_".join(name.split("_")[:2])  # SQLITE_READONLY_DIRECTORY: SQLITE_READONLY
        if primary in _SQLITE_PERMANENT:
            return Failure(500, _SQLITE_PERMANENT[primary])
        if primary in _SQLITE_BUSY:
            return Failure(503, BUSY)
        if str(cause).startswith(_SQLITE_NOT_MIGRATED):
            return Failure(500, NOT_MIGRATED)
    state = getattr(cause, "sqlstate", None)
    if isinstance(state, str) and not error.connection_invalidated:
        if state in _POSTGRES_PERMANENT:
            return Failure(500, _POSTGRES_PERMANENT[state])
        if state == _POSTGRES_LOCK_TIMEOUT:
            return Failure(503, BUSY)
        if state.startswith(_POSTGRES_TRANSIENT):
            return Failure(503, UNAVAILABLE)
    if isinstance(error, OperationalError) or error.connection_invalidated:
        return Failure(503, UNAVAILABLE)
    return None
