"""Migrations, start-up refusals (unmigrated database, missing key, production defaults), CLI."""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import stat
from pathlib import Path

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError
from typer.testing import CliRunner

from sklicense import db
from sklicense.cli import app as cli
from sklicense.crypto import SigningKeyError
from sklicense.models import AuditLog
from sklicense.settings import Settings, SettingsError

EXPECTED_TABLES = {
    "alembic_version",
    "applications",
    "customers",
    "devices",
    "licences",
    "licence_resends",
    "usage_reports",
    "seen_nonces",
    "rate_counters",
    "admin_tokens",
    "audit_log",
}


def test_migrated_schema(database_url) -> None:
    assert db.current_revision(database_url) == db.head_revision() == "0005"
    assert set(inspect(db.get_engine(database_url)).get_table_names()) == EXPECTED_TABLES
    db.check_migrated(database_url)


def test_upgrade_from_0001_keeps_applications(tmp_path: Path) -> None:
    """0002 adds the applications' public key; a server upgraded from 0001 keeps its rows,
    their key unset (customers taken on trust until one is registered)."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    db.upgrade(url, "0001")
    with db.get_engine(url).begin() as connection:
        connection.execute(
            text("INSERT INTO applications (name, created_at) VALUES ('app', CURRENT_TIMESTAMP)")
        )
    db.upgrade(url)
    assert db.current_revision(url) == "0005"
    with db.get_engine(url).begin() as connection:
        rows = connection.execute(text("SELECT name, public_key FROM applications")).all()
    assert [tuple(r) for r in rows] == [("app", None)]


def test_upgrade_to_0003_never_reuses_a_revoked_token_id(tmp_path: Path) -> None:
    """0003 makes SQLite token ids AUTOINCREMENT so audit entries name one token each; a token
    revoked before the upgrade with the highest id is named only in the audit log, and its id
    was given to the next token created."""
    from sklicense import crud

    url = f"sqlite:///{tmp_path / 'old.db'}"
    db.upgrade(url, "0002")
    with db.get_engine(url).begin() as connection:
        for token in ("h1", "h2", "h3"):
            connection.execute(
                text(
                    "INSERT INTO admin_tokens (token_sha256, role, created_at) "
                    "VALUES (:h, 'admin', CURRENT_TIMESTAMP)"
                ),
                {"h": token},
            )
        connection.execute(text("DELETE FROM admin_tokens WHERE id = 3"))
    with db.session_factory(url).begin() as session:
        for action, token_id in (("create", 1), ("create", 2), ("create", 3), ("revoke", 3)):
            crud.audit(session, "cli", f"token.{action}", f"token:{token_id}", {})
    db.upgrade(url)
    with db.session_factory(url).begin() as session:
        crud.create_token(session, "admin", "cli")
    with db.get_engine(url).begin() as connection:
        ids = connection.execute(text("SELECT id FROM admin_tokens ORDER BY id")).scalars().all()
    assert ids == [1, 2, 4]


def test_downgrade_to_0001_keeps_licensed_applications(database_url, sessions) -> None:
    """Downgrading to 0001 drops the columns 0002 and 0003 added and keeps the rows, also on
    SQLite, where copying and dropping the applications table is refused by its licences'
    foreign keys; admin tokens with an expiry are deleted, not made valid until revoked."""
    from alembic import command
    from tests.licensing.server_helpers import T0, make_application, make_customer

    from sklicense import crud
    from sklicense.models import Device, Licence

    issued = dt.datetime.fromtimestamp(T0, dt.UTC)
    make_application(sessions)
    make_customer(sessions)
    with sessions.begin() as session:
        crud.create_token(session, "admin", "test", dt.datetime.now(dt.UTC) + dt.timedelta(days=1))
        kept = crud.create_token(session, "read-only", "test")
        session.add(
            Device(id="d1", customer_id=42, signing_public_key="k", exchange_public_key="k")
        )
        session.flush()
        session.add(
            Licence(
                id="l1", device_id="d1", customer_id=42, application_id=1, models=["m"],
                issued_at=issued, expires_at=issued, inferences=None, request_nonce="n",
            )
        )  # fmt: skip

    def columns(table: str) -> set[str]:
        return {c["name"] for c in inspect(db.get_engine(database_url)).get_columns(table)}

    assert "expires_at" in columns("admin_tokens") and "public_key" in columns("applications")
    config = db.alembic_config(database_url)
    try:
        with db.get_engine(database_url).begin() as connection:
            config.attributes["connection"] = connection
            command.downgrade(config, "0001")
        assert db.current_revision(database_url) == "0001"
        assert "public_key" not in columns("applications")
        assert "expires_at" not in columns("admin_tokens")
        with db.get_engine(database_url).begin() as connection:
            assert connection.execute(text("SELECT count(*) FROM licences")).scalar_one() == 1
            # 0002 has no expiry: the token made to expire would be valid until revoked
            tokens = connection.execute(text("SELECT token_sha256, role FROM admin_tokens")).all()
            assert [tuple(t) for t in tokens] == [(crud.token_sha256(kept), "read-only")]
    finally:
        db.upgrade(database_url)  # the session's database, for the next tests
    assert db.current_revision(database_url) == db.head_revision()


def test_policy_check_constraint(database_url) -> None:
    engine = db.get_engine(database_url)
    with (
        pytest.raises(IntegrityError, match=r"ck_customers_policy|CHECK constraint failed"),
        engine.begin() as connection,
    ):
        connection.execute(
            text(
                "INSERT INTO customers (id, name, default_licence_seconds, max_devices, "
                "inferences_granted, created_at) VALUES (1, 'x', 60, 1, 0, CURRENT_TIMESTAMP)"
            )
        )


def test_audit_log_is_append_only(database_url) -> None:
    from sklicense.models import AppendOnlyError, utcnow

    sessions = db.session_factory(database_url)
    with sessions.begin() as session:
        session.add(AuditLog(at=utcnow(), actor="t", action="a", target="x", detail={}))
    with pytest.raises(AppendOnlyError, match="append-only"), sessions.begin() as session:
        session.get(AuditLog, 1).action = "changed"
    with pytest.raises(AppendOnlyError, match="append-only"), sessions.begin() as session:
        session.delete(session.get(AuditLog, 1))


def test_unmigrated_database_is_refused(tmp_path: Path, state_dir: Path) -> None:
    from sklicense.api.main import create_app

    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    with pytest.raises(db.DatabaseNotMigratedError, match=r"fresh\.db does not exist"):
        create_app(Settings(database_url=url, state_dir=state_dir))
    assert not (tmp_path / "fresh.db").exists()  # checking did not create it
    sqlite3.connect(tmp_path / "fresh.db").close()  # an empty database: there, not migrated
    message = (
        f"The database {url} is not migrated; this server needs revision 0005. "
        "Run `sklicense db upgrade` (with the same --database-url) first."
    )
    with pytest.raises(db.DatabaseNotMigratedError) as error:
        create_app(Settings(database_url=url, state_dir=state_dir))
    assert str(error.value) == message
    result = CliRunner().invoke(
        cli, ["serve", "--database-url", url, "--state-dir", str(state_dir)]
    )
    assert result.exit_code == 1
    assert "is not migrated" in result.output and "sklicense db upgrade" in result.output
    result = CliRunner().invoke(cli, ["db", "upgrade", "--database-url", url])
    assert result.exit_code == 0, result.output
    create_app(Settings(database_url=url, state_dir=state_dir))


def test_missing_signing_key_is_refused(sqlite_url, tmp_path: Path) -> None:
    from sklicense.api.main import create_app

    with pytest.raises(SigningKeyError, match="Run `sklicense init`"):
        create_app(Settings(database_url=sqlite_url, state_dir=tmp_path / "none"))


def test_production_refuses_defaults(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="no signing key is configured"):
        Settings(environment="production", admin_token="x" * 40).check_production()
    key = tmp_path / "k"
    with pytest.raises(SettingsError, match="no strong admin token"):
        Settings(environment="production", signing_key_file=key).check_production()
    with pytest.raises(SettingsError, match="no strong admin token"):
        Settings(
            environment="production", signing_key_file=key, admin_token="changethis"
        ).check_production()
    Settings(
        environment="production", signing_key_file=key, admin_token="x" * 40
    ).check_production()
    with pytest.raises(SettingsError, match="environment must be one of local, production"):
        Settings(environment="staging")
    env = Settings.from_env({"SKLICENSE_LICENCE_REQUESTS_PER_MINUTE": "5"})
    assert env.licence_requests_per_minute == 5 and env.database_url == "sqlite:///./sklicense.db"
    assert env.new_device_requests_per_minute == 120
    env = Settings.from_env({"SKLICENSE_NEW_DEVICE_REQUESTS_PER_MINUTE": "7"})
    assert env.new_device_requests_per_minute == 7
    with pytest.raises(SettingsError, match="new_device_requests_per_minute must be a positive"):
        Settings(new_device_requests_per_minute=0)


def test_cli_admin_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SKLICENSE_DATABASE_URL", raising=False)
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(cli, list(args))
        assert result.exit_code == 0, result.output
        return result.output

    assert "Created signing key" in run("init")
    key = tmp_path / "sklicense_state" / "server.key"
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    token = run("token", "create", "--role", "read-only").strip()
    assert token.startswith("skl_")
    (tmp_path / "kek.b64").write_text("QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=\n")
    run("app", "create", "demo-app", "--kek-file", "kek.b64", "--model", "m1", "--model", "m2")
    assert json.loads(run("app", "list")) == [
        {"id": 1, "name": "demo-app", "has_kek": True, "models": ["m1", "m2"], "public_key": None}
    ]
    created = json.loads(
        run("customer", "create", "--id", "42", "--name", "Acme", "--contract-end", "2027-01-01")
    )
    assert created["contract_end"] == "2027-01-01T00:00:00+00:00"
    edited = json.loads(run("customer", "edit", "--id", "42", "--quota", "500"))
    assert edited["inference_quota"] == 500
    failed = runner.invoke(cli, ["customer", "create", "--id", "7", "--name", "NoPolicy"])
    assert failed.exit_code == 1 and "at least one policy" in failed.output
    missing = runner.invoke(cli, ["device", "revoke", "nope"])
    assert missing.exit_code == 1 and "device 'nope' not found" in missing.output
    assert json.loads(run("device", "list")) == []
    assert json.loads(run("usage")) == []
    audit = json.loads(run("audit"))
    assert [e["action"] for e in audit] == [
        "customer.update",
        "customer.create",
        "application.create",
        "token.create",
    ]
    sessions = db.session_factory("sqlite:///./sklicense.db")
    with sessions() as session:
        from sklicense import crud

        assert crud.token_role(session, token) == "read-only"
