"""Bad input to the licence server gets a 4xx that says what is wrong, never a 500.

Device endpoints can be called by anyone before a signature is checked, so their bodies are
bounded and strict, and a 422 never echoes what was sent; admin values that the database or a
datetime cannot hold are refused when they are set, not when a licence is next issued.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any
from unittest import mock

import pytest
from tests.licensing.server_helpers import FakeDevice, bearer, make_application, make_customer

from sklicense.api.limits import MAX_ADMIN_BODY, BodyLimit
from sklicense.schemas import INT64_MAX, MAX_LICENCE_SECONDS
from skruntime.licensing.protocol import MAX_DEVICE_BODY

JUNK_SIGNATURE = {"X-SK-Signature": "AAAA", "Content-Type": "application/json"}


@pytest.mark.parametrize("path", ["/v1/licences", "/v1/usage"])
@pytest.mark.parametrize(
    ("raw", "status"),
    [
        ('{"device_id": NaN}', 400),
        ("[" * 8_000 + "]" * 8_000, 400),  # under the size cap, over the recursion limit
        ('{"device_id": "\\ud800"}', 400),
        ('{"x": "' + "a" * MAX_DEVICE_BODY + '"}', 413),
    ],
    ids=["nan", "deep", "surrogate", "oversized"],
)
def test_malformed_device_bodies_are_refused(client, path: str, raw: str, status: int) -> None:
    response = client.post(path, content=raw.encode(), headers=JUNK_SIGNATURE)
    assert response.status_code == status, response.text


CHUNK = 64 * 1024


def _limited(path: str, headers: list[tuple[bytes, bytes]]) -> tuple[list[Any], int, bytes]:
    """Send an endless chunked body through :class:`BodyLimit`: (messages sent back, chunks
    the middleware pulled, what the app read)."""
    pulled = 0
    seen = bytearray()

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": b" " * CHUNK, "more_body": pulled < 4}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        seen.extend(message["body"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": headers}
    asyncio.run(BodyLimit(app)(scope, receive, send))
    return sent, pulled, bytes(seen)


@pytest.mark.parametrize(
    ("path", "limit"), [("/v1/licences", MAX_DEVICE_BODY), ("/v1/admin/customers", MAX_ADMIN_BODY)]
)
def test_an_oversized_body_is_refused_before_it_is_read_whole(path: str, limit: int) -> None:
    """413 before the framework buffers the body (it did: a 400 MiB body to either path, sent
    by anyone, grew the server by 0.8 to 1.2 GiB before the 413 or the 401)."""
    declared = [(b"content-length", str(100 * limit).encode())]
    sent, pulled, seen = _limited(path, declared)
    assert sent[0]["status"] == 413 and pulled == 0 and not seen
    with mock.patch(f"{__name__}.CHUNK", limit // 3):  # chunked: refused after the limit
        sent, pulled, seen = _limited(path, [])
    assert sent[0]["status"] == 413 and pulled == 4 and not seen
    assert str(limit).encode() in sent[1]["body"]


def test_a_body_within_the_limit_reaches_the_app_whole() -> None:
    sent, pulled, seen = _limited("/v1/licences", [])
    assert sent[0]["status"] == 200 and pulled == 4 and seen == b" " * (4 * CHUNK)


@pytest.mark.parametrize("path", ["/v1/licences", "/v1/usage"])
def test_a_422_does_not_echo_the_request(client, path: str) -> None:
    body = {"x": "a" * 10_000}
    response = client.post(path, content=json.dumps(body), headers=JUNK_SIGNATURE)
    assert response.status_code == 422
    assert "aaaaaaaaaa" not in response.text and len(response.text) < 2_000


def test_out_of_range_device_fields_are_422(client, sessions, clock) -> None:
    make_application(sessions)
    make_customer(sessions)
    device = FakeDevice("dev-1")
    for change in ({"customer_id": 2**63}, {"device_id": "a\u0000b"}, {"timestamp": -1}):
        body = device.licence_request(42, clock.now) | change
        response = client.post("/v1/licences", json=body, headers=device.headers(body))
        assert response.status_code == 422, (change, response.text)


def test_admin_values_that_cannot_be_stored_are_refused(client, tokens, sessions) -> None:
    admin = bearer(tokens["admin"])
    make_customer(sessions)
    base = {"id": 7, "name": "ACME", "inference_quota": 10}
    for change in (
        {"id": 2**63},
        {"inference_quota": 2**63},
        {"default_licence_seconds": MAX_LICENCE_SECONDS + 1},
        {"contract_end": "9999-12-31T23:59:59-14:00"},
    ):
        response = client.post("/v1/admin/customers", json=base | change, headers=admin)
        assert response.status_code == 422, (change, response.text)
    for change in ({"name": None}, {"max_devices": None}, {"default_licence_seconds": None}):
        response = client.patch("/v1/admin/customers/42", json=change, headers=admin)
        assert response.status_code == 422, (change, response.text)
        assert "cannot be null" in response.text
    assert client.get(f"/v1/admin/customers/{INT64_MAX + 1}", headers=admin).status_code == 422
    for listing in ("devices", "licences", "usage"):
        url = f"/v1/admin/{listing}?customer_id={2**63}"
        assert client.get(url, headers=admin).status_code == 422, listing
    audit = client.get(f"/v1/admin/audit?offset={2**63}", headers=admin)  # was a 500
    assert audit.status_code == 422, audit.text
    assert client.get(f"/v1/admin/audit?offset={INT64_MAX}", headers=admin).json() == []
    cleared = client.patch("/v1/admin/customers/42", json={"inference_quota": None}, headers=admin)
    assert cleared.status_code == 422 and "at least one policy" in cleared.text


def test_a_long_licence_duration_is_refused_where_it_is_set(sessions) -> None:
    """The CLI writes through crud: a duration no expiry date can hold is refused there too."""
    from sklicense.crud import CrudError

    with pytest.raises(CrudError, match="at most 3153600000"):
        make_customer(sessions, id=8, default_licence_seconds=10**12)
    with pytest.raises(CrudError, match="name must be 1 to 200 characters and not blank"):
        make_customer(sessions, id=9, name="   ")


def _sklicense(*args: str, cwd) -> subprocess.CompletedProcess[str]:
    """The installed command's entry point (``python -m sklicense``), as an operator runs it."""
    command = [sys.executable, "-m", "sklicense", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_cli_failures_are_one_line_errors(tmp_path) -> None:
    db_url = f"sqlite:///{tmp_path / 'x.db'}"
    assert (
        _sklicense("init", "--state-dir", "st", "--database-url", db_url, cwd=tmp_path).returncode
        == 0
    )
    (tmp_path / "rand.kek").write_bytes(bytes(range(128, 228)))
    (tmp_path / "keydir" / "server.key").mkdir(parents=True)
    cases = [
        (
            ["customer", "list", "--database-url", "postgresql://u@127.0.0.1:1/x"],
            "database refused",
        ),
        (
            ["customer", "list", "--database-url", f"sqlite:///{tmp_path}/typo.db"],
            "typo.db does not exist",
        ),
        (
            [
                "customer",
                "create",
                "--id",
                str(2**63),
                "--name",
                "a",
                "--quota",
                "5",
                "--database-url",
                db_url,
            ],
            "id must be in",
        ),
        (
            [
                "customer",
                "create",
                "--id",
                "5",
                "--name",
                "a",
                "--quota",
                "5",
                "--default-days",
                "nan",
                "--database-url",
                db_url,
            ],
            "--default-days must be",
        ),
        (
            ["app", "create", "a2", "--kek-file", "rand.kek", "--database-url", db_url],
            "is not base64 text",
        ),
        (
            ["app", "create", "a3", "--kek-file", "missing.b64", "--database-url", db_url],
            "--kek-file missing.b64 cannot be read (No such file or directory): pass the file",
        ),
        (["init", "--state-dir", "keydir", "--database-url", db_url], "Is a directory"),
        (  # was a 40-line traceback of uvicorn's bind (OverflowError)
            ["serve", "--port", "99999", "--state-dir", "st", "--database-url", db_url],
            "--port must be in [1, 65535], but got 99999",
        ),
        (
            ["serve", "--workers", "0", "--state-dir", "st", "--database-url", db_url],
            "--workers must be in [1,",
        ),
    ]
    for args, message in cases:
        done = _sklicense(*args, cwd=tmp_path)
        assert done.returncode == 1, (args, done.stderr)
        assert message in done.stderr and "Traceback" not in done.stderr, (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) <= 3, (args, done.stderr)
    assert not (tmp_path / "typo.db").exists()  # a mistyped path is not created
