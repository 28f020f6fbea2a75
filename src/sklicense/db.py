"""Engines, sessions and the programmatic Alembic migrations.

SQLite: every transaction starts with ``BEGIN IMMEDIATE`` (one writer at a time, so the quota
read-modify-write is serialised across processes), except a lookup's (:func:`reading`: a plain
``BEGIN``, no write lock), and the device requests of one process take turns on a lock
(:func:`device_writes`). PostgreSQL: the licence decision locks the customer row, and a usage
report its licence's row, with ``SELECT … FOR UPDATE`` inside its transaction.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.exc import DisconnectionError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Session, sessionmaker

from .api.database_errors import BUSY, classify

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
READ_ONLY = "sklicense_read_only"
"""The execution option of a :func:`reading` session's connection."""
ADMIN_TIMEOUT_S = 30.0
"""How long the admin CLI, migrations and the server's start wait for a pooled connection or
for a lock another connection holds (a request in a server process, another admin command):
they run locally, under no device's timeout, so a busy server only delays them. The server's
requests wait its ``database_pool_timeout_s`` instead (:func:`get_engine`)."""
_creating: ContextVar[bool] = ContextVar("sklicense_creating", default=False)
"""Whether a migration runs (:func:`upgrade`), which may create a SQLite database file."""
DBMOVED = "SQLITE_READONLY_DBMOVED"
"""SQLite's error of a write to a database file that was moved or deleted while open."""
_deadline: ContextVar[float | None] = ContextVar("sklicense_write_deadline", default=None)
"""When (``time.monotonic()``) the device request in :func:`device_writes` must have its
answer: its transactions wait for locks only until then."""


class DatabaseNotMigratedError(RuntimeError):
    """The database schema is missing or older than this server's migrations."""


class DatabaseTooNewError(DatabaseNotMigratedError):
    """The database is at a revision this server does not know: a newer release migrated it."""


def normalise_url(url: str) -> str:
    """``postgresql://`` and ``postgres://`` mean psycopg 3 (the driver this package ships); a
    relative SQLite path, or the relative path of a SQLite URI (``file:data/sklicense.db`` with
    ``?uri=true``), is made absolute (against the current directory)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        path = url.removeprefix("sqlite:///")
        database, _, query = path.partition("?")
        options = dict(parse_qsl(query))
        if _is_uri(database, options):
            file = _uri_file(database, options)
            if file is None or file.is_absolute():  # in memory, or SQLite's absolute form
                return url
            absolute = quote(str(file.resolve()))
            return f"sqlite:///{urlsplit(database)._replace(path=absolute).geturl()}?{query}"
        if path and path != ":memory:":
            return "sqlite:///" + str(Path(path).resolve())
    return url


def get_engine(url: str, timeout_s: float = ADMIN_TIMEOUT_S) -> Engine:
    """One engine per database URL (and timeout) per process. A transaction that finds every
    pooled connection in use waits at most ``timeout_s`` seconds for one, then fails with
    :class:`sqlalchemy.exc.TimeoutError`; one that finds another connection holding a lock it
    needs (SQLite's write lock, a PostgreSQL row) waits as long for it, then fails ("database is
    locked", PostgreSQL's lock timeout): the server answers both 503. The server passes its
    ``database_pool_timeout_s``, less than a device's request timeout: SQLAlchemy's pool
    default and the former SQLite busy timeout, 30 s each, and PostgreSQL's lock waits, without
    end, kept a device waiting past its own timeout, which then asked again while the server
    still worked on the first request."""
    return _engine(normalise_url(url), timeout_s)


@cache
def _engine(url: str, timeout_s: float) -> Engine:
    # an in-memory SQLite database has a pool of one connection per thread: nothing to wait for
    pooled = (
        {} if url.startswith("sqlite") and sqlite_file(url) is None else {"pool_timeout": timeout_s}
    )
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"timeout": timeout_s, "check_same_thread": False},
            hide_parameters=True,  # a failing statement's values (a KEK) never reach a log
            **pooled,
        )

        opened: list[bool] = []
        file = engine_file(engine)

        @event.listens_for(engine, "do_connect")
        def _open(dialect: Any, record: Any, cargs: list[Any], cparams: dict[str, Any]) -> Any:
            """Once the engine has opened its database file, open it read-write only, never
            create it: a file moved or deleted while the server runs was created again, empty,
            by the next connection (every request then answered "run sklicense db upgrade").
            The connection is made here, ``cargs`` and ``cparams`` left as they are: SQLAlchemy
            2.0 passes every connection of the engine the same two, so changing them made every
            later connection read-write only, a migration's too (``db upgrade`` in the process
            could not create the file again: "unable to open database file")."""
            if opened and file is not None and not _creating.get() and not cparams.get("uri"):
                uri = f"{file.resolve().as_uri()}?mode=rw"
                return dialect.connect(uri, *cargs[1:], **{**cparams, "uri": True})
            return None

        @event.listens_for(engine, "connect")
        def _connect(dbapi_connection: Any, record: Any) -> None:
            if not opened:
                opened.append(True)
            if file is not None:
                record.info[_FILE_ID] = _file_id(file)
            dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine, "checkout")
        def _replaced(dbapi_connection: Any, record: Any, proxy: Any) -> None:
            """A connection to a file that another one replaced at its path (a backup moved
            over it, the server running) still reads the old file, deleted: every read answered
            from it (health "ok", an admin list of rows the restored file does not hold) until
            a write failed ``SQLITE_READONLY_DBMOVED``, answered 503. Such a connection is
            dropped when taken from the pool: the pool opens the file at the path instead. (A
            file moved away, none at its path, is left to that write's 503 and to the health
            check.)"""
            was, now = record.info.get(_FILE_ID), _file_id(file) if file is not None else None
            if was is not None and now is not None and now != was:
                raise DisconnectionError(f"the database file {file} was replaced")

        @event.listens_for(engine, "handle_error")
        def _moved(context: Any) -> None:
            """A database file moved, replaced or deleted under an open connection
            (``SQLITE_READONLY_DBMOVED``): every write of that connection fails, for good. The
            pool's connections are dropped, so the next request opens the file at its path
            again: the file put back (restored from a backup), or an error naming the file."""
            if getattr(context.original_exception, "sqlite_errorname", "") == DBMOVED:
                context.is_disconnect = True

        @event.listens_for(engine, "begin")
        def _begin(connection: Any) -> None:
            connection.exec_driver_sql(f"PRAGMA busy_timeout={_lock_wait_ms(timeout_s)}")
            read_only = connection.get_execution_options().get(READ_ONLY, False)
            connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

        return engine
    engine = create_engine(
        url,
        pool_pre_ping=True,
        hide_parameters=True,
        connect_args=_postgres_connect_args(url),
        **pooled,
    )
    if engine.dialect.name == "postgresql":
        own = "lock_timeout" in _url_options(url)  # the URL's own wins but for device requests

        @event.listens_for(engine, "begin")
        def _begin_postgres(connection: Any) -> None:
            if _deadline.get() is not None or not own:
                connection.exec_driver_sql(f"SET LOCAL lock_timeout = {_lock_wait_ms(timeout_s)}")

    return engine


CONNECT_TIMEOUT_S = 10
"""How long a PostgreSQL connection attempt may take, unless the URL says otherwise
(``?connect_timeout=``): without it, a server that accepts the connection and never answers
(a wrong port, a stalled host) kept the CLI, or a request, waiting for ever."""


def _postgres_connect_args(url: str) -> dict[str, Any]:
    """PostgreSQL's ``connect_timeout``: :data:`CONNECT_TIMEOUT_S` unless the URL sets one
    (another driver gets nothing: it may not take the argument). The lock timeout is set per
    transaction (``SET LOCAL``, :func:`_engine`), not as a startup ``options`` parameter, which
    connection poolers such as PgBouncer refuse."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql" or "connect_timeout" in parsed.query:
        return {}
    return {"connect_timeout": CONNECT_TIMEOUT_S}


def _url_options(url: str) -> str:
    """The ``options`` of a PostgreSQL URL's query (``-c search_path=...``), joined."""
    from sqlalchemy.engine import make_url

    given = make_url(url).query.get("options", "")
    return " ".join([given] if isinstance(given, str) else given)


def _lock_wait_ms(timeout_s: float) -> int:
    """How long a transaction beginning now waits for a lock another connection holds (SQLite's
    busy timeout, PostgreSQL's lock timeout): until the deadline of the device request it belongs
    to (:func:`device_writes`), else the engine's ``timeout_s``; at least 1 ms (0 would wait for
    ever)."""
    deadline = _deadline.get()
    return _milliseconds(timeout_s if deadline is None else deadline - time.monotonic())


def _milliseconds(seconds: float) -> int:
    """``seconds`` as the whole milliseconds a lock wait takes, at least 1 (0: no limit)."""
    return max(1, round(seconds * 1000))


@contextmanager
def device_writes(url: str, timeout_s: float) -> Iterator[None]:
    """What a device request holds while it writes: on SQLite one lock per process, so that
    concurrent requests wait their turn in the process instead of polling SQLite's busy handler,
    which sleeps up to 100 ms between tries (bench/licence_throughput.py, 8 devices at once:
    99th-percentile latency 0.7–1.1 s without the lock, 78–89 ms with it); elsewhere nothing
    (the row locks queue).

    The request waits ``timeout_s`` in all for locks (:func:`_lock_wait_ms`): on SQLite for its
    turn and then for another process's write lock, on PostgreSQL for the rows each of its
    transactions locks in turn, so that the device gets its 503 in time however many waits
    there are. Waiting for the turn longer raises :class:`sqlalchemy.exc.TimeoutError` (503)."""
    deadline = time.monotonic() + timeout_s
    url = normalise_url(url)
    lock = _sqlite_lock(url) if url.startswith("sqlite") else None
    if lock is not None and not lock.acquire(timeout=timeout_s):
        raise PoolTimeoutError(
            f"no turn to write came within {timeout_s} s: the device requests before this one "
            "held it (database_pool_timeout_s)"
        )
    token = _deadline.set(deadline)
    try:
        yield
    finally:
        _deadline.reset(token)
        if lock is not None:
            lock.release()


@cache
def _sqlite_lock(url: str) -> threading.Lock:
    return threading.Lock()


def session_factory(url: str, timeout_s: float = ADMIN_TIMEOUT_S) -> sessionmaker[Session]:
    """Sessions of :func:`get_engine`'s engine for ``url`` and ``timeout_s``."""
    return sessionmaker(get_engine(url, timeout_s), expire_on_commit=False)


@contextmanager
def reading(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """A session for lookups that write nothing. On SQLite its transaction starts with a plain
    (deferred) ``BEGIN``, not ``BEGIN IMMEDIATE``: it neither waits for nor holds up another
    connection's write transaction (an unsigned device request, which anyone can send, only
    looks up the device's key). Whatever it reads is checked again by the transaction that
    writes, so a value changed in between is not acted on."""
    with sessions() as session:
        session.connection(execution_options={READ_ONLY: True})
        yield session


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at ``url`` to ``revision`` (``sklicense db upgrade``); a database
    that a newer release migrated is refused (:class:`DatabaseTooNewError`), and so is a SQLite
    path that is a folder (:func:`_refuse_folder`) or in a folder that does not exist. The
    migration is one transaction: interrupted, it leaves the database as it was. A lock held by
    another connection past :data:`ADMIN_TIMEOUT_S`, or a PostgreSQL user without the right to
    create tables, is a :class:`DatabaseNotMigratedError` saying what to do
    (:func:`_upgrade_refusal`; the command line's catch-all advice was about the URL and the
    disk)."""
    _refuse_folder(url)
    path = sqlite_file(url)
    if path is not None and not path.parent.is_dir():  # SQLite: "unable to open database file"
        raise DatabaseNotMigratedError(
            f"The folder {path.parent} of the database file does not exist: create it, or name "
            "a file in an existing folder (--database-url or SKLICENSE_DATABASE_URL)."
        )
    config = alembic_config(url)
    creating = _creating.set(True)
    try:
        with get_engine(url, ADMIN_TIMEOUT_S).begin() as connection:
            _one_migration_at_a_time(connection)
            _refuse_newer(url, MigrationContext.configure(connection).get_current_revision())
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    except SQLAlchemyError as error:
        refusal = _upgrade_refusal(url, error)
        if refusal is None:
            raise
        raise refusal from error
    finally:
        _creating.reset(creating)


def is_busy(error: SQLAlchemyError) -> bool:
    """Whether ``error`` is a wait for a lock another connection held past the timeout."""
    failure = classify(error)
    return failure is not None and failure.detail == BUSY


def locked_message(database: str, holders: str, rerun: str) -> str:
    """What to say when ``database`` stayed locked past :data:`ADMIN_TIMEOUT_S`: who may hold
    it (``holders``) and the command to ``rerun``; nothing was changed."""
    return (
        f"{database} stayed locked for {ADMIN_TIMEOUT_S:g} s by another connection: {holders} "
        "or of a database session (PostgreSQL's pg_stat_activity lists them). Nothing was "
        f"changed: run {rerun} again once it has ended."
    )


def _upgrade_refusal(url: str, error: SQLAlchemyError) -> DatabaseNotMigratedError | None:
    """What to do when an upgrade failed on a lock held past :data:`ADMIN_TIMEOUT_S` or on a
    PostgreSQL user that may not create tables; None for other failures (the command line says
    those in one line)."""
    if is_busy(error):
        return DatabaseNotMigratedError(
            locked_message(
                f"The database {safe_url(url)}",
                "another `sklicense db upgrade` still migrating it, or a transaction of a server",
                "`sklicense db upgrade`",
            )
        )
    cause = getattr(error, "orig", None)
    if getattr(cause, "sqlstate", None) == "42501":  # insufficient_privilege
        reason = str(cause).strip().splitlines()[0]
        return DatabaseNotMigratedError(
            f"The PostgreSQL user of {safe_url(url)} may not change the licence tables "
            f"({reason}): run `sklicense db upgrade` as the user that owns the database and its "
            "tables (PostgreSQL 15 and later let only the database's owner create tables in its "
            "public schema), or GRANT CREATE on the schema to this user."
        )
    return None


MIGRATION_LOCK_ID = 0x736B6C6963656E73
"""The PostgreSQL advisory lock (``b"sklicens"`` as a 64-bit key) that a migration holds
until its transaction ends (:func:`_one_migration_at_a_time`)."""


def _one_migration_at_a_time(connection: Connection) -> None:
    """On PostgreSQL, wait for any other migration of the database to end before reading its
    revision: two ``sklicense db upgrade`` started together (each replica's start-up) both
    created the tables or indexes, and the second failed with ``duplicate key value violates
    unique constraint "pg_type_typname_nsp_index"``; now the second finds the database
    migrated. SQLite's ``BEGIN IMMEDIATE`` already makes them take turns."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK_ID})


def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config("sqlite://"))


def head_revision() -> str:
    head = _scripts().get_current_head()
    assert head is not None
    return head


def _refuse_newer(url: str, current: str | None) -> None:
    """Raise :class:`DatabaseTooNewError` if ``current`` is no revision of this server."""
    if current is not None and current not in {s.revision for s in _scripts().walk_revisions()}:
        raise DatabaseTooNewError(
            f"The database {safe_url(url)} is at revision {current}, newer than this server "
            f"(its latest revision is {head_revision()}): upgrade sklicense to the release that "
            "migrated it; `sklicense db upgrade` cannot downgrade a database."
        )


def current_revision(url: str) -> str | None:
    with get_engine(url).connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


_FILE_ID = "sklicense_file_id"
"""The key of a SQLite connection record's ``info``: the file it opened (:func:`_file_id`)."""


def _file_id(path: Path) -> tuple[int, int] | None:
    """Which file is at ``path`` (device and inode), None when none is."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_dev, status.st_ino


def engine_file(engine: Engine) -> Path | None:
    """The file a SQLite engine opens, else None. Read from the engine's URL object, never
    from its text: ``str(engine.url)`` percent-encodes a path's non-ASCII letters, ``@``,
    ``#`` and ``:`` (``/srv/m%C3%BCller.db``), a file that does not exist."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or ":memory:" in database:
        return None
    if _is_uri(database, engine.url.query):
        return _uri_file(database, engine.url.query)
    return Path(database)


def sqlite_file(url: str) -> Path | None:
    """The file of a file-based SQLite URL, else None."""
    url = normalise_url(url)
    if not url.startswith("sqlite:///") or ":memory:" in url:
        return None
    database, _, query = url.removeprefix("sqlite:///").partition("?")
    options = dict(parse_qsl(query))
    return _uri_file(database, options) if _is_uri(database, options) else Path(database or ".")


def _is_uri(database: str, options: Mapping[str, Any]) -> bool:
    """Whether SQLAlchemy hands SQLite the URL's database part as a URI (``?uri=true``)."""
    return database.startswith("file:") and options.get("uri") == "true"


def _uri_file(database: str, options: Mapping[str, Any]) -> Path | None:
    """The file of a SQLite URI (``file:/srv/sklicense.db``, ``file:data/sklicense.db``), None
    for an in-memory one (``mode=memory``, ``file::memory:``). SQLite opens the URI's path,
    percent-decoded; until 2026-12-07 a file named "file:..." was looked for instead."""
    path = unquote(urlsplit(database.partition("?")[0]).path)
    in_memory = options.get("mode") == "memory" or path in ("", ":memory:")
    return None if in_memory else Path(path)


def _refuse_folder(url: str) -> None:
    """Raise :class:`DatabaseNotMigratedError` when the SQLite URL names a folder: SQLite says
    only "unable to open database file", and "does not exist" would be wrong."""
    path = sqlite_file(url)
    if path is not None and path.is_dir():
        raise DatabaseNotMigratedError(
            f"The database path {path} is a folder, not a database file: name a file in it "
            f"(--database-url or SKLICENSE_DATABASE_URL), e.g. sqlite:///{path / 'sklicense.db'}."
        )


def check_migrated(url: str) -> None:
    """Raise :class:`DatabaseNotMigratedError` unless the database is at the head revision
    (:class:`DatabaseTooNewError` when a newer release migrated it).

    A SQLite file that does not exist is reported as such, and not created: connecting would
    leave an empty file at a mistyped path."""
    _refuse_folder(url)
    path = sqlite_file(url)
    if path is not None and not path.is_file():
        raise DatabaseNotMigratedError(
            f"The database file {path} does not exist. Check the path (--database-url or "
            "SKLICENSE_DATABASE_URL), or create the database with `sklicense init`."
        )
    current = current_revision(url)
    _refuse_newer(url, current)
    head = head_revision()
    if current != head:
        state = "not migrated" if current is None else f"at revision {current}"
        raise DatabaseNotMigratedError(
            f"The database {safe_url(url)} is {state}; this server needs revision {head}. "
            "Run `sklicense db upgrade` (with the same --database-url) first."
        )


def safe_url(url: str) -> str:
    """The URL with any password masked, for messages; characters that are not UTF-8 text (a
    file name of another encoding, passed on the command line) are shown escaped, as
    ``\udcff``, since the URL cannot be rendered with them."""
    from sqlalchemy.engine import make_url

    text = normalise_url(url).encode("utf-8", "backslashreplace").decode("utf-8")
    return make_url(text).render_as_string(hide_password=True)
