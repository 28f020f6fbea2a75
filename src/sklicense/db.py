"""Engines, sessions and the programmatic Alembic migrations.

SQLite: every transaction starts with ``BEGIN IMMEDIATE`` (one writer at a time, so the quota
read-modify-write is serialised across processes), except a lookup's (:func:`reading`: a plain
``BEGIN``, no write lock), and the device requests of one process take turns on a lock
(:func:`device_writes`). PostgreSQL: the licence decision locks the customer row, and a usage
report its licence's row, with ``SELECT … FOR UPDATE`` inside its transaction.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from functools import cache
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from sklicense.settings import DEFAULT_POOL_TIMEOUT_S

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
READ_ONLY = "sklicense_read_only"
"""The execution option of a :func:`reading` session's connection."""


class DatabaseNotMigratedError(RuntimeError):
    """The database schema is missing or older than this server's migrations."""


class DatabaseTooNewError(DatabaseNotMigratedError):
    """The database is at a revision this server does not know: a newer release migrated it."""


def normalise_url(url: str) -> str:
    """``postgresql://`` and ``postgres://`` mean psycopg 3 (the driver this package ships); a
    relative SQLite path is made absolute (against the current directory)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            return "sqlite:///" + str(Path(path).resolve())
    return url


def get_engine(url: str, pool_timeout_s: float = DEFAULT_POOL_TIMEOUT_S) -> Engine:
    """One engine per database URL (and pool timeout) per process. A request that finds every
    pooled connection in use waits at most ``pool_timeout_s`` seconds for one, then fails with
    :class:`sqlalchemy.exc.TimeoutError` (the server answers 503): SQLAlchemy's default, 30 s,
    kept a client waiting past its own timeout for a bare 500."""
    return _engine(normalise_url(url), pool_timeout_s)


@cache
def _engine(url: str, pool_timeout_s: float) -> Engine:
    # an in-memory SQLite database has a pool of one connection per thread: nothing to wait for
    pooled = (
        {}
        if url.startswith("sqlite") and _sqlite_file(url) is None
        else {"pool_timeout": pool_timeout_s}
    )
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"timeout": 30, "check_same_thread": False},
            hide_parameters=True,  # a failing statement's values (a KEK) never reach a log
            **pooled,
        )

        @event.listens_for(engine, "connect")
        def _connect(dbapi_connection: Any, record: Any) -> None:
            dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin(connection: Any) -> None:
            read_only = connection.get_execution_options().get(READ_ONLY, False)
            connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

        return engine
    return create_engine(
        url,
        pool_pre_ping=True,
        hide_parameters=True,
        connect_args=_connect_timeout(url),
        **pooled,
    )


CONNECT_TIMEOUT_S = 10
"""How long a PostgreSQL connection attempt may take, unless the URL says otherwise
(``?connect_timeout=``): without it, a server that accepts the connection and never answers
(a wrong port, a stalled host) kept the CLI, or a request, waiting for ever."""


def _connect_timeout(url: str) -> dict[str, int]:
    """PostgreSQL's ``connect_timeout``: :data:`CONNECT_TIMEOUT_S` unless the URL sets one
    (another driver gets nothing: it may not take the argument)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql" or "connect_timeout" in parsed.query:
        return {}
    return {"connect_timeout": CONNECT_TIMEOUT_S}


def device_writes(url: str) -> AbstractContextManager[Any]:
    """What a device request holds while it writes: on SQLite one lock per process, so that
    concurrent requests wait their turn in the process instead of polling SQLite's busy handler,
    which sleeps up to 100 ms between tries (bench/licence_throughput.py, 8 devices at once:
    99th-percentile latency 0.7–1.1 s without the lock, 78–89 ms with it); elsewhere nothing
    (the row locks queue)."""
    return (
        _sqlite_lock(normalise_url(url))
        if normalise_url(url).startswith("sqlite")
        else nullcontext()
    )


@cache
def _sqlite_lock(url: str) -> threading.Lock:
    return threading.Lock()


def session_factory(
    url: str, pool_timeout_s: float = DEFAULT_POOL_TIMEOUT_S
) -> sessionmaker[Session]:
    """Sessions of :func:`get_engine`'s engine for ``url`` and ``pool_timeout_s``."""
    return sessionmaker(get_engine(url, pool_timeout_s), expire_on_commit=False)


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
    path that is a folder (:func:`_refuse_folder`)."""
    _refuse_folder(url)
    _refuse_newer(url, current_revision(url))
    engine = get_engine(url)
    config = alembic_config(url)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


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


def _sqlite_file(url: str) -> Path | None:
    """The file of a file-based SQLite URL, else None."""
    url = normalise_url(url)
    if not url.startswith("sqlite:///") or ":memory:" in url:
        return None
    return Path(url.removeprefix("sqlite:///").split("?", 1)[0] or ".")


def _refuse_folder(url: str) -> None:
    """Raise :class:`DatabaseNotMigratedError` when the SQLite URL names a folder: SQLite says
    only "unable to open database file", and "does not exist" would be wrong."""
    path = _sqlite_file(url)
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
    path = _sqlite_file(url)
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
