"""Admin lifecycle: tokens (list, revoke), authentication under a flood of bad tokens, model
lists, empty edits, a quota set over unlimited licences, concurrent creates, a database newer
than the server — API and CLI, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import datetime as dt
import json
import threading
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError
from tests.licensing.conftest import clean
from tests.licensing.server_helpers import (
    APP,
    Clock,
    FakeDevice,
    bearer,
    make_application,
    make_customer,
)
from typer.testing import CliRunner

from sklicense import crud, db
from sklicense.api.main import create_app
from sklicense.cli import app as cli
from sklicense.models import AuditLog
from sklicense.settings import Settings

SECRET_KEK = b"KEKSECRETKEKSECRETKEKSECRETKEKSE"
KEK = base64.b64encode(SECRET_KEK).decode()
READ_ONLY = {"detail": "this token is read-only: admin role required"}
UNAUTHENTICATED = {"detail": "missing or invalid bearer token"}
TOO_MANY = {"detail": "too many failed admin authentications; retry in a minute"}


def invoke(database_url: str, *args: str) -> Any:
    return CliRunner().invoke(cli, [*args, "--database-url", database_url])


def audit_entries(sessions: Any, action: str) -> list[AuditLog]:
    with sessions() as session:
        return list(session.scalars(select(AuditLog).where(AuditLog.action == action)))


# -- tokens --------------------------------------------------------------------------------------


def test_tokens_are_listed_by_fingerprint_and_revoked_at_once(client, tokens, sessions) -> None:
    admin, read_only = bearer(tokens["admin"]), bearer(tokens["read-only"])
    listed = client.get("/v1/admin/tokens", headers=admin)
    assert listed.status_code == 200
    assert [(t["id"], t["role"], t["fingerprint"]) for t in listed.json()] == [
        (1, "admin", crud.token_fingerprint(tokens["admin"])),
        (2, "read-only", crud.token_fingerprint(tokens["read-only"])),
    ]
    assert tokens["admin"] not in listed.text and tokens["read-only"] not in listed.text
    assert client.get("/v1/admin/tokens", headers=read_only).json() == READ_ONLY
    assert client.delete("/v1/admin/tokens/1", headers=read_only).json() == READ_ONLY

    assert client.get("/v1/admin/customers", headers=read_only).status_code == 200
    revoked = client.delete("/v1/admin/tokens/2", headers=admin)
    assert (revoked.status_code, revoked.json()["role"]) == (200, "read-only")
    gone = client.get("/v1/admin/customers", headers=read_only)
    assert (gone.status_code, gone.json()) == (401, UNAUTHENTICATED)
    again = client.delete("/v1/admin/tokens/2", headers=admin)
    assert (again.status_code, again.json()) == (404, {"detail": "token 2 not found"})
    assert client.delete(f"/v1/admin/tokens/{2**31}", headers=admin).status_code == 422
    with sessions.begin() as session:  # a revoked token's id is not given to the next one
        crud.create_token(session, "read-only", "test")
    assert [t["id"] for t in client.get("/v1/admin/tokens", headers=admin).json()] == [1, 3]
    [entry] = audit_entries(sessions, "token.revoke")
    assert (entry.actor, entry.target, entry.detail) == (
        f"token:{crud.token_fingerprint(tokens['admin'])}",
        "token:2",
        {"role": "read-only", "fingerprint": crud.token_fingerprint(tokens["read-only"])},
    )


def test_a_token_with_an_expiry_stops_working_then(database_url, sessions, settings) -> None:
    """``token create --expires-days``: listed with its expiry, 401 from then on (by the
    server's clock), audited; without the option a token is valid until revoked."""
    created = invoke(database_url, "token", "create", "--expires-days", "2")
    assert created.exit_code == 0, created.output
    token = created.output.strip()
    [row] = invoke_json(database_url, "token", "list")
    expires = dt.datetime.fromisoformat(row["expires_at"])
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(days=2)
    assert abs((expires - soon).total_seconds()) < 60
    [entry] = audit_entries(sessions, "token.create")
    assert entry.detail == {"role": "admin", "expires_at": expires.isoformat()}
    clock = Clock(int(expires.timestamp()) - 1)
    with TestClient(create_app(settings, clock)) as client:
        listed = client.get("/v1/admin/tokens", headers=bearer(token))
        assert listed.status_code == 200 and listed.json()[0]["expires_at"] is not None
        clock.now += 1  # its holder is told it expired (it got "missing or invalid")
        gone = client.get("/v1/admin/tokens", headers=bearer(token))
        assert (gone.status_code, gone.json()) == (
            401,
            {
                "detail": f"the bearer token expired at {expires.isoformat()}: create a new "
                "one (sklicense token create) and revoke this one"
            },
        )
        unknown = client.get("/v1/admin/tokens", headers=bearer(token + "x"))
        assert (unknown.status_code, unknown.json()) == (401, UNAUTHENTICATED)
    for days, message in (("0", "over 0"), ("nan", "over 0"), ("36501", "up to 36500")):
        refused = invoke(database_url, "token", "create", "--expires-days", days)
        assert refused.exit_code == 1 and message in refused.output, refused.output
    for when in (dt.datetime(2000, 1, 1, tzinfo=dt.UTC), dt.datetime(3000, 1, 1)):
        with sessions.begin() as session, pytest.raises(crud.CrudError, match="in the future"):
            crud.create_token(session, "admin", "test", when)
    forever = invoke(database_url, "token", "create").output.strip()
    assert invoke_json(database_url, "token", "list")[1]["expires_at"] is None
    with sessions() as session:
        far = dt.datetime(9999, 1, 1, tzinfo=dt.UTC)
        assert crud.token_role(session, forever, far) == "admin"
        assert crud.token_role(session, token, far) is None


def test_the_bearer_scheme_is_case_insensitive(client, tokens) -> None:
    """RFC 9110: ``bearer`` and ``BEARER`` name the scheme too (they got 401)."""
    for scheme in ("bearer", "BEARER", "Bearer"):
        headers = {"Authorization": f"{scheme} {tokens['admin']}"}
        assert client.get("/v1/admin/customers", headers=headers).status_code == 200, scheme
    for header in ("Bearer", "Bearer ", "Basic " + tokens["admin"], tokens["admin"]):
        response = client.get("/v1/admin/customers", headers={"Authorization": header})
        assert response.status_code == 401, header


def invoke_json(database_url: str, *args: str) -> Any:
    done = invoke(database_url, *args)
    assert done.exit_code == 0, done.output
    return json.loads(done.output)


def test_cli_lists_and_revokes_tokens(database_url, tokens, sessions) -> None:
    listed = invoke(database_url, "token", "list")
    assert listed.exit_code == 0, listed.output
    assert '"fingerprint": "' + crud.token_fingerprint(tokens["admin"]) + '"' in listed.output
    assert tokens["admin"] not in listed.output
    done = invoke(database_url, "token", "revoke", "1")
    assert (done.exit_code, done.output) == (0, "Revoked token 1\n")
    with sessions() as session:
        assert crud.token_role(session, tokens["admin"]) is None
    assert [e.actor for e in audit_entries(sessions, "token.revoke")] == ["cli"]
    missing = invoke(database_url, "token", "revoke", "1")
    assert (missing.exit_code, missing.output) == (1, "Error: token 1 not found\n")
    huge = invoke(database_url, "token", "revoke", str(2**31))
    assert (huge.exit_code, huge.output) == (
        1,
        "Error: token id must be in [0, 2147483647], but got 2147483648\n",
    )


# -- authentication ------------------------------------------------------------------------------


def test_bad_tokens_never_lock_out_valid_ones(settings, clock, tokens) -> None:
    """Non-ASCII tokens are failures like any other (401, counted), never a 500; once the
    failures of an address pass the limit they get 429, while valid tokens still pass."""
    configured = "c" * 40
    limit = settings.admin_auth_failures_per_minute
    app = create_app(settings.with_overrides(admin_token=configured), clock)
    with TestClient(app) as client:
        for raw in (b"Bearer caf\xe9", b"Bearer \xff\xfe"):
            response = client.get("/v1/admin/customers", headers={"Authorization": raw})
            assert (response.status_code, response.json()) == (401, UNAUTHENTICATED)
        for _ in range(limit - 2):
            assert client.get("/v1/admin/customers", headers=bearer("nope")).status_code == 401
        refused = client.get("/v1/admin/customers", headers={"Authorization": b"Bearer \xe9"})
        assert (refused.status_code, refused.json()) == (429, TOO_MANY)
        for token in (configured, tokens["admin"], tokens["read-only"]):
            assert client.get("/v1/admin/customers", headers=bearer(token)).status_code == 200


# -- applications: model lists -------------------------------------------------------------------


def test_an_empty_model_list_is_refused_and_models_can_be_changed(client, tokens, sessions):
    admin = bearer(tokens["admin"])
    empty = client.post("/v1/admin/applications", json={"name": APP, "models": []}, headers=admin)
    assert (empty.status_code, empty.json()) == (
        422,
        {"detail": "models must name at least one model, or be null for any model, but got []"},
    )
    make_application(sessions)
    path = f"/v1/admin/applications/{APP}"
    changed = client.patch(path, json={"models": ["m1", "m2"]}, headers=admin)
    assert (changed.status_code, changed.json()["models"]) == (200, ["m1", "m2"])
    cleared = client.patch(path, json={"models": None}, headers=admin)
    assert (cleared.status_code, cleared.json()["models"]) == (200, None)
    for body, detail in (
        ({}, "nothing would change: give models"),
        (
            {"models": []},
            "models must name at least one model, or be null for any model, but got []",
        ),
        (
            {"models": ["m1", "m2", "m1", "m2", "m3"]},
            "models must name each model once, but 'm1', 'm2' appear more than once: remove the "
            "repeats (or name the model you meant)",
        ),
    ):
        response = client.patch(path, json=body, headers=admin)
        assert (response.status_code, response.json()) == (422, {"detail": detail})
    missing = client.patch("/v1/admin/applications/nope", json={"models": None}, headers=admin)
    assert (missing.status_code, missing.json()) == (
        404,
        {"detail": "application 'nope' not found"},
    )
    assert client.patch(
        path, json={"models": None}, headers=bearer(tokens["read-only"])
    ).json() == (READ_ONLY)
    assert [e.detail for e in audit_entries(sessions, "application.set_models")] == [
        {"models": ["m1", "m2"], "replaced": None},
        {"models": None, "replaced": ["m1", "m2"]},
    ]


def test_cli_sets_models(database_url, sessions) -> None:
    make_application(sessions)
    done = invoke(database_url, "app", "set-models", APP, "--model", "m1", "--model", "m2")
    assert (done.exit_code, done.output) == (
        0,
        "Application 'demo-app' licences may name 'm1', 'm2'\n",
    )
    done = invoke(database_url, "app", "set-models", APP, "--any")
    assert (done.exit_code, done.output) == (
        0,
        "Application 'demo-app' licences may name any model\n",
    )
    usage = "Error: give --model (repeat it for each model) or --any, not both and not neither\n"
    for extra in ([], ["--any", "--model", "m1"]):
        failed = invoke(database_url, "app", "set-models", APP, *extra)
        assert (failed.exit_code, failed.output) == (1, usage)
    with sessions() as session:
        assert crud.get_application(session, APP).models is None


# -- empty edits ---------------------------------------------------------------------------------


def test_empty_edits_are_refused(client, tokens, sessions, clock, database_url) -> None:
    admin = bearer(tokens["admin"])
    make_application(sessions)
    make_customer(sessions)
    device = FakeDevice("dev-1")
    body = device.licence_request(42, clock.now)
    assert client.post("/v1/licences", json=body, headers=device.headers(body)).status_code == 200
    customer = client.patch("/v1/admin/customers/42", json={}, headers=admin)
    assert (customer.status_code, customer.json()) == (
        422,
        {
            "detail": "nothing would change: give at least one of name, contract_end, "
            "inference_quota, max_devices, default_licence_seconds"
        },
    )
    patched = client.patch("/v1/admin/devices/dev-1", json={}, headers=admin)
    assert (patched.status_code, patched.json()) == (
        422,
        {"detail": "nothing would change: give status and/or duration_override_seconds"},
    )
    edit = invoke(database_url, "customer", "edit", "--id", "42")
    assert (edit.exit_code, edit.output) == (
        1,
        "Error: nothing would change: give at least one of --name, --contract-end, --quota, "
        "--max-devices, --default-days\n",
    )
    edit = invoke(database_url, "device", "edit", "dev-1")
    assert (edit.exit_code, edit.output) == (
        1,
        "Error: nothing would change: give --duration-days and/or --activate\n",
    )
    assert audit_entries(sessions, "customer.update") == []
    assert audit_entries(sessions, "device.update") == []


# -- quotas --------------------------------------------------------------------------------------


def test_setting_a_quota_warns_of_unlimited_licences(client, tokens, sessions, clock, database_url):
    clock.now = int(time.time())  # the CLI compares with the real time
    end = dt.datetime.fromtimestamp(clock.now + 365 * 86400, dt.UTC)
    make_application(sessions)
    make_customer(sessions, contract_end=end, inference_quota=None)
    device = FakeDevice("dev-1")
    body = device.licence_request(42, clock.now)
    licence = client.post("/v1/licences", json=body, headers=device.headers(body)).json()["licence"]
    assert licence["inferences"] is None
    expiry = dt.datetime.fromtimestamp(licence["expires_at"], dt.UTC).isoformat()
    warning = (
        f"customer 42 has 1 licence(s) issued without a quota that stay unlimited until they "
        f"expire (the last at {expiry}); the quota applies to licences issued from now on"
    )
    admin = bearer(tokens["admin"])
    response = client.patch("/v1/admin/customers/42", json={"inference_quota": 100}, headers=admin)
    assert (response.status_code, response.json()["warning"]) == (200, warning)
    response = client.patch("/v1/admin/customers/42", json={"max_devices": 3}, headers=admin)
    assert (response.status_code, response.json()["warning"]) == (200, None)
    edited = invoke(database_url, "customer", "edit", "--id", "42", "--quota", "50")
    assert edited.exit_code == 0 and edited.output.endswith(f"Warning: {warning}\n")
    clock.now = licence["expires_at"]
    response = client.patch("/v1/admin/customers/42", json={"inference_quota": 60}, headers=admin)
    assert (response.status_code, response.json()["warning"]) == (200, None)


# -- concurrency and secrets in logs -------------------------------------------------------------


def test_a_failing_statement_does_not_show_its_values(database_url, sessions) -> None:
    """What a failed statement raises (and the server logs) hides its values: a KEK."""
    with sessions.begin() as session:
        crud.create_application(session, "dup", SECRET_KEK, "test")
    statement = text("INSERT INTO applications (name, kek, created_at) VALUES (:n, :k, :t)")
    with pytest.raises(IntegrityError) as error, db.get_engine(database_url).begin() as c:
        c.execute(statement, {"n": "dup", "k": SECRET_KEK, "t": dt.datetime.now(dt.UTC)})
    assert "KEKSECRET" not in str(error.value) and "hidden due to hide_parameters" in str(
        error.value
    )


def _wait_for_a_lock_wait(engine: Any) -> None:
    waiting = text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE wait_event_type = 'Lock' AND datname = current_database()"
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with engine.connect() as connection:
            if connection.scalar(waiting):
                return
        time.sleep(0.05)
    raise AssertionError("the create request never waited on the concurrent insert")


@pytest.mark.parametrize(
    ("resource", "body", "insert", "detail"),
    [
        (
            "applications",
            {"name": "race", "kek": KEK},
            "INSERT INTO applications (name, created_at) VALUES ('race', now())",
            "application 'race' already exists",
        ),
        (
            "customers",
            {"id": 5, "name": "Race", "inference_quota": 5},
            "INSERT INTO customers (id, name, default_licence_seconds, max_devices, "
            "inference_quota, inferences_granted, created_at) VALUES (5, 'x', 60, 1, 5, 0, now())",
            "customer 5 already exists",
        ),
    ],
    ids=["application", "customer"],
)
def test_a_concurrent_create_is_409_on_postgres(
    postgres_url, state_dir, clock, caplog, resource, body, insert, detail
) -> None:
    """Another admin's create commits after this one looked for the row and before it
    inserts: 409, not a 500 whose traceback would carry the statement's values (a KEK)."""
    clean(postgres_url)
    with db.session_factory(postgres_url).begin() as session:
        token = crud.create_token(session, "admin", "test")
    engine = db.get_engine(postgres_url)
    settings = Settings(database_url=postgres_url, state_dir=state_dir)
    responses: list[Any] = []
    caplog.set_level("DEBUG")
    with TestClient(create_app(settings, clock), raise_server_exceptions=False) as client:
        with engine.connect() as other:
            other.execute(text(insert))  # uncommitted: the request's lookup does not see it
            request = threading.Thread(
                target=lambda: responses.append(
                    client.post(f"/v1/admin/{resource}", json=body, headers=bearer(token))
                )
            )
            request.start()
            _wait_for_a_lock_wait(engine)
            other.commit()
        request.join(30)
    [response] = responses
    assert (response.status_code, response.json()) == (409, {"detail": detail})
    assert "KEKSECRET" not in caplog.text and KEK not in caplog.text


# -- a database newer than the server ------------------------------------------------------------


def test_a_database_newer_than_the_server_is_one_line(database_url, tmp_path) -> None:
    engine = db.get_engine(database_url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    message = (
        f"The database {db.safe_url(database_url)} is at revision 0099, newer than this server "
        f"(its latest revision is {db.head_revision()}): upgrade sklicense to the release that "
        "migrated it; `sklicense db upgrade` cannot downgrade a database."
    )
    try:
        for args in (("db", "upgrade"), ("customer", "list")):
            result = invoke(database_url, *args)
            assert (result.exit_code, result.output) == (1, f"Error: {message}\n"), args
        result = CliRunner().invoke(
            cli, ["init", "--state-dir", str(tmp_path / "st"), "--database-url", database_url]
        )
        assert result.exit_code == 1 and result.output.endswith(f"Error: {message}\n")
        for check in (db.check_migrated, db.upgrade):
            with pytest.raises(db.DatabaseNotMigratedError) as error:
                check(database_url)
            assert str(error.value) == message
    finally:
        with engine.begin() as connection:
            connection.execute(
                text("UPDATE alembic_version SET version_num = :head"), {"head": db.head_revision()}
            )
