"""Review of the SQLite file moved under the server (commit 2c71203).

The engine's ``do_connect`` hook opens the file read-write only (never creating it) once the
engine has opened it. It did so by changing the ``cargs``/``cparams`` it is given; SQLAlchemy
2.0 (``sqlalchemy>=2`` is what the package requires) passes every connection of an engine
the same two, so after one such connection every later one was read-write only, a
migration's too: ``db upgrade`` run again in the process (an embedded server's
``init_state``, a test's fixture) after the file was deleted failed "unable to open database
file" (reproduced with SQLAlchemy 2.0.36: /tmp/review-op/upgrade_after_reconnect.py)."""

from __future__ import annotations

from pathlib import Path

from sklicense import db


def connect_as_sqlalchemy_2_0(engine, cargs: list, cparams: dict) -> None:
    """A connection made as SQLAlchemy 2.0's ``create_engine`` makes one: the engine's
    ``do_connect`` hooks are given its one list and dict of connection arguments."""
    for hook in engine.dialect.dispatch.do_connect:
        connection = hook(engine.dialect, None, cargs, cparams)
        if connection is not None:
            connection.close()
            return
    engine.dialect.connect(*cargs, **cparams).close()


def test_the_read_write_only_connection_leaves_the_shared_arguments_alone(tmp_path: Path) -> None:
    path = tmp_path / "sklicense.db"
    url = f"sqlite:///{path}"
    db.upgrade(url)
    engine = db.get_engine(url)
    try:
        with engine.connect():  # the engine has opened its file
            pass
        args, params = engine.dialect.create_connect_args(engine.url)
        cargs, cparams = list(args), dict(params)
        connect_as_sqlalchemy_2_0(engine, cargs, cparams)
        assert (cargs, cparams) == (list(args), dict(params))

        # what that broke: the file deleted, a migration in the same process creates it again
        engine.dispose()
        path.unlink()
        db.upgrade(url)
        assert db.current_revision(url) == db.head_revision()
    finally:
        engine.dispose()


def test_reads_after_a_restore_over_the_file_answer_from_the_restored_file(
    tmp_path: Path, state_dir: Path
) -> None:
    """A backup restored over the file while the server runs: before, the pooled connections
    went on reading the replaced (deleted) file, so an admin list showed a customer the
    restored file does not hold and health answered ok, until the first write, refused 503
    (/tmp/review-op/restored_over_reads.py). Now they are dropped as they are taken."""
    import os
    import sqlite3

    from fastapi.testclient import TestClient
    from tests.licensing.server_helpers import bearer, make_application, make_customer

    from sklicense import crud
    from sklicense.api.main import create_app
    from sklicense.settings import Settings

    path = tmp_path / "sklicense.db"
    url = f"sqlite:///{path}"
    db.upgrade(url)
    sessions = db.session_factory(url)
    make_application(sessions)
    make_customer(sessions)
    with sessions.begin() as session:
        admin = bearer(crud.create_token(session, "admin", "test"))
    backup = tmp_path / "backup.db"
    with sqlite3.connect(path) as live, sqlite3.connect(backup) as copy:
        live.backup(copy)  # customer 42 only
    app = create_app(Settings(database_url=url, state_dir=state_dir))
    customer = {"id": 43, "name": "B", "inference_quota": 5}
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            assert client.post("/v1/admin/customers", json=customer, headers=admin).is_success
            os.replace(backup, path)
            listed = [c["id"] for c in client.get("/v1/admin/customers", headers=admin).json()]
            assert listed == [42]
            assert client.get("/v1/health").json() == {"status": "ok"}
            again = client.post("/v1/admin/customers", json=customer, headers=admin)
            assert again.status_code == 201, again.text
    finally:
        db.get_engine(url).dispose()
        db.get_engine(url, Settings().database_pool_timeout_s).dispose()


def test_health_of_a_database_path_with_letters_a_url_escapes(
    tmp_path: Path, state_dir: Path
) -> None:
    """The health check read the file's path back from ``str(engine.url)``, which
    percent-encodes a non-ASCII letter, ``@``, ``#`` and ``:``: a healthy server on
    ``/srv/lizenzen/müller.db`` answered ``GET /v1/health`` 503 "the licence database file
    was moved" (its load balancer took it out) while serving every licence
    (/tmp/review-op/health_unicode_path.py). A file moved away is still said so."""
    from fastapi.testclient import TestClient

    from sklicense.api.main import create_app
    from sklicense.settings import Settings

    for name in ("müller.db", "ops@prod.db", "a#b.db", "c:d.db"):
        folder = tmp_path / name.replace(".db", "")
        folder.mkdir()
        path = folder / name
        url = f"sqlite:///{path}"
        db.upgrade(url)
        app = create_app(Settings(database_url=url, state_dir=state_dir))
        try:
            with TestClient(app, raise_server_exceptions=False) as client:
                health = client.get("/v1/health")
                assert health.json() == {"status": "ok"}, (name, health.text)
                path.rename(folder / "moved.db")
                gone = client.get("/v1/health")
                assert gone.status_code == 503 and "was moved" in gone.json()["detail"], name
        finally:
            db.get_engine(url).dispose()
            db.get_engine(url, Settings().database_pool_timeout_s).dispose()
