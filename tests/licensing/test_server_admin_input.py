"""Admin and device input the server must refuse cleanly (422 or one CLI error line, never a
500 or a traceback): names that cannot round-trip a URL path, NUL, out-of-range CLI values,
empty contract ends, oversized model lists; and unsigned requests kept out of the audit log.
On SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import logging
from typing import Any

import pytest
from sqlalchemy import func, select, text
from tests.licensing.server_helpers import (
    APP,
    FakeDevice,
    bearer,
    make_application,
    make_customer,
)
from typer.testing import CliRunner

from sklicense import crud
from sklicense.cli import app as cli
from sklicense.models import AuditLog, Customer, Licence

KEK = base64.b64encode(b"k" * 32).decode()
INT64 = "9223372036854775807"


def invoke(database_url: str, *args: str) -> Any:
    return CliRunner().invoke(cli, [*args, "--database-url", database_url])


def licence_request(client: Any, device: FakeDevice, **fields: Any) -> Any:
    body = device.licence_request(42, 1_780_000_000, **fields)
    return client.post("/v1/licences", json=body, headers=device.headers(body))


NAME_RULE = (
    "name must be an application name a configuration can hold: 1 to 128 letters, digits, "
    "'_', '.' or '-', not starting with '.' or '-', but got "
)


@pytest.mark.parametrize(
    ("name", "detail"),
    [
        ("a/b", NAME_RULE + "'a/b'"),
        ("..", NAME_RULE + "'..'"),
        ("app\x00x", NAME_RULE + "'app\\x00x'"),
        ("a" * 201, NAME_RULE + "201 characters"),
        ("  ", NAME_RULE + "'  '"),
        (" app", NAME_RULE + "' app'"),  # no configuration can name it: no device would ask
    ],
    ids=["slash", "dot-dot", "nul", "long", "blank", "leading-space"],
)
def test_application_names_are_checked_alike_by_api_and_cli(
    client, tokens, database_url, name: str, detail: str
) -> None:
    admin = bearer(tokens["admin"])
    response = client.post("/v1/admin/applications", json={"name": name, "kek": KEK}, headers=admin)
    assert (response.status_code, response.json()) == (422, {"detail": detail})
    if "\x00" not in name:  # a NUL cannot be passed in a command line
        result = invoke(database_url, "app", "create", name)
        assert (result.exit_code, result.output) == (1, f"Error: {detail}\n")
    assert client.get("/v1/admin/applications", headers=admin).json() == []


def test_existing_rows_with_a_slash_are_kept(client, tokens, sessions) -> None:
    with sessions.begin() as session:
        session.execute(
            text(
                "INSERT INTO applications (name, created_at) VALUES ('old/app', CURRENT_TIMESTAMP)"
            )
        )
    listed = client.get("/v1/admin/applications", headers=bearer(tokens["admin"])).json()
    assert [a["name"] for a in listed] == ["old/app"]


@pytest.mark.parametrize(
    ("device_id", "message"),
    [
        (
            "x/y",
            "Value error, must not contain '/' (admin URL paths name it), but got 'x/y'",
        ),
        (
            ".",
            "Value error, must not be '.' or '..' (admin URL paths name it), but got '.'",
        ),
    ],
    ids=["slash", "dot"],
)
def test_device_ids_must_round_trip_a_path_segment(client, sessions, device_id, message) -> None:
    make_application(sessions)
    make_customer(sessions)
    response = licence_request(client, FakeDevice(device_id))
    assert response.status_code == 422
    assert [e["msg"] for e in response.json()["detail"]] == [message]


def test_nul_in_admin_input_is_refused(client, tokens, sessions) -> None:
    admin = bearer(tokens["admin"])
    make_application(sessions)
    customer = client.post(
        "/v1/admin/customers", json={"id": 1, "name": "A\x00", "inference_quota": 3}, headers=admin
    )
    assert (customer.status_code, customer.json()) == (
        422,
        {"detail": "name must not contain control characters, but got '\\x00'"},
    )
    device = client.patch("/v1/admin/devices/a%00b", json={"status": "revoked"}, headers=admin)
    assert device.status_code == 422 and device.json()["detail"][0]["loc"] == ["path", "device_id"]
    listed = client.get("/v1/admin/licences", params={"device_id": "a\x00b"}, headers=admin)
    assert listed.status_code == 422 and listed.json()["detail"][0]["loc"] == ["query", "device_id"]
    kek = client.put("/v1/admin/applications/a%00b/kek", json={"kek": KEK}, headers=admin)
    assert (kek.status_code, kek.json()) == (404, {"detail": "application 'a\\x00b' not found"})
    models = client.patch(
        f"/v1/admin/applications/{APP}", json={"models": ["m\x00"]}, headers=admin
    )
    assert (models.status_code, models.json()) == (
        422,
        {"detail": "model names must not contain control characters, but got '\\x00'"},
    )
    make_customer(sessions)
    response = licence_request(client, FakeDevice(), application="a\x00b")
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["application"]


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"kek": "not base64!"}, "kek must be base64 text (as `skprotect export-kek` writes)"),
        (
            {"kek": base64.b64encode(b"x" * 16).decode()},
            "kek must decode to 32 bytes, but got 16 bytes",
        ),
    ],
    ids=["not-base64", "short"],
)
def test_a_bad_kek_is_422(client, tokens, sessions, body, detail) -> None:
    make_application(sessions)
    admin = bearer(tokens["admin"])
    for response in (
        client.post("/v1/admin/applications", json={"name": "other"} | body, headers=admin),
        client.put(f"/v1/admin/applications/{APP}/kek", json=body, headers=admin),
    ):
        assert (response.status_code, response.json()) == (422, {"detail": detail})


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (
            ["customer", "edit", "--id", str(2**63), "--quota", "5"],
            f"--id must be in [0, {INT64}], but got {2**63}",
        ),
        (
            ["device", "list", "--customer", str(2**63)],
            f"--customer must be in [0, {INT64}], but got {2**63}",
        ),
        (
            ["usage", "--customer", str(2**63)],
            f"--customer must be in [0, {INT64}], but got {2**63}",
        ),
        (["audit", "--limit", str(2**63)], f"--limit must be in [1, {INT64}], but got {2**63}"),
        (["audit", "--limit", "0"], f"--limit must be in [1, {INT64}], but got 0"),
        (
            ["customer", "edit", "--id", "42", "--max-devices", str(2**31)],
            f"--max-devices must be in [1, 2147483647], but got {2**31}",
        ),
        (
            ["customer", "edit", "--id", "42", "--contract-end", "9999-12-31T23:00-14:00"],
            "--contract-end must be from 0001-01-01 to 9999-12-31 once converted to UTC, but got "
            "'9999-12-31T23:00-14:00'",
        ),
        (
            ["customer", "edit", "--id", "42", "--contract-end", ""],
            "--contract-end must be an ISO 8601 date or datetime, but got ''",
        ),
        (
            ["customer", "create", "--id", "7", "--name", "B", "--contract-end", ""],
            "--contract-end must be an ISO 8601 date or datetime, but got ''",
        ),
    ],
    ids=[
        "edit-id",
        "device-list",
        "usage",
        "audit-limit",
        "audit-zero",
        "max-devices",
        "contract-end-range",
        "contract-end-empty",
        "create-contract-end-empty",
    ],
)
def test_cli_values_out_of_range_are_one_error_line(database_url, sessions, args, error) -> None:
    end = "2030-01-01T00:00:00+00:00"
    invoke(database_url, "customer", "create", "--id", "42", "--name", "A", "--contract-end", end)
    result = invoke(database_url, *args)
    assert (result.exit_code, result.output) == (1, f"Error: {error}\n")
    with sessions() as session:
        customer = crud.get_customer(session, 42)
        assert customer.contract_end.isoformat() == end and customer.max_devices == 1
        assert session.get(crud.Customer, 7) is None


def test_none_clears_the_contract_end(database_url, sessions) -> None:
    make_customer(sessions, contract_end=None, inference_quota=5)
    invoke(database_url, "customer", "edit", "--id", "42", "--contract-end", "2030-01-01")
    result = invoke(database_url, "customer", "edit", "--id", "42", "--contract-end", "none")
    assert result.exit_code == 0, result.output
    with sessions() as session:
        assert crud.get_customer(session, 42).contract_end is None


def test_licence_request_model_lists_are_bounded(client, sessions) -> None:
    with sessions.begin() as session:
        crud.create_application(session, APP, None, "test", models=["model-a"])
    make_customer(sessions)
    device = FakeDevice()
    for models, message in (
        (
            [f"m{i}" for i in range(1001)],
            "List should have at most 1000 items after validation, not 1001",
        ),
        (["m" * 201], "String should have at most 200 characters"),
        ([""], "String should have at least 1 character"),
    ):
        response = licence_request(client, device, models=models)
        assert response.status_code == 422
        assert [e["msg"] for e in response.json()["detail"]] == [message]
    response = licence_request(client, device, models=[f"x{i}" for i in range(7)])
    assert (response.status_code, response.json()["detail"]) == (
        403,
        "application 'demo-app' has no model named 'x0', 'x1', 'x2', 'x3', 'x4' and 2 more",
    )


@pytest.mark.parametrize("model", ["a\x00b", "a\x07b", "a\nb"])
def test_licence_request_model_names_with_control_characters_are_422(
    client, sessions, model
) -> None:
    """An application that allows any model stored such a name in the licence (and signed it);
    a NUL, which PostgreSQL keeps in a JSON column, was licensed on both databases."""
    make_application(sessions)  # any model
    make_customer(sessions)
    response = licence_request(client, FakeDevice(), models=["model-a", model])
    assert response.status_code == 422, response.text
    assert "control characters" in response.json()["detail"][0]["msg"]
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Licence)) == 0
        assert session.get(Customer, 42).inferences_granted == 0


def test_unsigned_requests_are_logged_not_audited(client, sessions, caplog) -> None:
    make_application(sessions)
    make_customer(sessions)
    device = FakeDevice("dev-1")
    body = device.licence_request(42, 1_780_000_000)
    caplog.set_level(logging.WARNING, logger="sklicense")
    for headers in ({}, {"X-SK-Signature": "AAAA"}):
        response = client.post("/v1/licences", json=body, headers=headers)
        assert (response.status_code, response.json()["reason"]) == (403, "bad_signature")
    with sessions() as session:
        assert (
            list(session.scalars(select(AuditLog.action).where(AuditLog.actor == "device:dev-1")))
            == []
        )
    warning = (
        "licence request naming device 'dev-1' denied: the request signature does not verify "
        "with the key in the request (not audited)"
    )
    assert [r.getMessage() for r in caplog.records if r.name == "sklicense.service"] == [
        warning
    ] * 2
    assert body["nonce"] not in caplog.text
