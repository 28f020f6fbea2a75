"""Property-based fuzzing of every licence server route, on SQLite and PostgreSQL: generated
bodies, query strings, path segments and headers never make the server answer 500 or raise,
and every 4xx is a JSON object with a ``detail`` that says what is wrong.

Bodies are "roughly the right shape": each field of a valid request is kept, dropped, set to
null or replaced by any JSON value (wrong types, integers past 64 bits, unicode, lone
surrogates, nested objects), extra fields are added, or the body is any JSON value or bytes.
Device requests are signed by the device after the mutation (so the checks behind the
signature are reached), and sometimes carry no or a wrong signature. One app and database
serve every example of the module: what earlier examples created is what later ones meet.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.licensing.conftest import clean
from tests.licensing.server_helpers import (
    APP,
    CONFIG_SHA,
    Clock,
    FakeDevice,
    make_customer,
)

from sklicense import crud, db, service
from sklicense.api.main import create_app
from sklicense.crypto import create_signing_key
from sklicense.settings import Settings
from skruntime.licensing.protocol import SIGNATURE_HEADER, b64, new_nonce, sign

ADMIN_TOKEN = "fuzz-admin-token-0123456789abcdef"
SIGNED_APP = "signed-app"
"""An application with a registered configuration key: requests must carry a signed
configuration, which the fuzzer signs with :data:`APP_KEY` after mutating it."""
APP_KEY = Ed25519PrivateKey.generate()
MANY = 10**9
"""Rate limits high enough that no example is refused for the ones before it."""
EXAMPLES = 60
"""Examples per route (per row of the parametrised tests)."""
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --- JSON values -------------------------------------------------------------------------

EDGE_INTS = st.sampled_from(
    [0, -1, 1, 2**31 - 1, 2**31, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30]
)
EDGE_TEXT = st.sampled_from(
    ["", " ", "\x00", "a\x00b", "\ud800", "x\udfff", "/", "..", ".", "é", "😀", "a" * 10_000]
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    EDGE_INTS,
    st.floats(),
    st.text(max_size=30),
    EDGE_TEXT,
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
"""Any JSON value, NaN and infinities included (the server must refuse them as JSON)."""


def shaped(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """A body of ``fields`` (name: strategy of valid values) with a few of them (often none)
    dropped, null or any JSON value, plus a few extra fields (often none): mostly valid, so
    that the checks behind validation are reached too."""

    @st.composite
    def body(draw: st.DrawFn) -> dict[str, Any]:
        broken = draw(st.just(set()) | st.sets(st.sampled_from(sorted(fields)), max_size=3))
        out: dict[str, Any] = {}
        for name, valid in fields.items():
            how = draw(st.sampled_from(["any", "missing", "null"])) if name in broken else "valid"
            if how == "valid":
                out[name] = draw(valid)
            elif how == "any":
                out[name] = draw(json_values)
            elif how == "null":
                out[name] = None
        out.update(
            draw(st.just({}) | st.dictionaries(st.text(max_size=10), json_values, max_size=2))
        )
        return out

    return body()


def usually(valid: Any, other: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``valid`` most of the time, else a value of ``other``."""
    return st.one_of(st.just(valid), st.just(valid), st.just(valid), other)


def bodies(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """Mostly :func:`shaped` bodies, sometimes any JSON value."""
    return st.one_of(shaped(fields), shaped(fields), shaped(fields), json_values)


def encode(body: Any) -> bytes:
    """``body`` as JSON bytes (ASCII escapes, so lone surrogates and NaN travel as sent)."""
    return json.dumps(body).encode()


# --- the server ---------------------------------------------------------------------------


@dataclass
class Server:
    client: TestClient
    clock: Clock
    device: FakeDevice
    licence_id: str
    read_only: str
    """A read-only token (reads pass, writes and the token routes are 403)."""


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """A server (on SQLite, then PostgreSQL) with application ``demo-app``, ``signed-app``
    (with a configuration key), customer 42, a registered device holding a licence, a
    read-only token and two admin tokens to revoke."""
    url = request.getfixturevalue(f"{request.param}_url")
    clean(url)
    service._nonces_pruned_at.pop(url, None)
    folder: Path = tmp_path_factory.mktemp("fuzz")
    create_signing_key(folder / "state" / "server.key")
    settings_ = Settings(
        database_url=url,
        state_dir=folder / "state",
        admin_token=ADMIN_TOKEN,
        licence_requests_per_minute=MANY,
        admin_auth_failures_per_minute=MANY,
        new_device_requests_per_minute=MANY,
        usage_reports_per_minute=MANY,
    )
    sessions = db.session_factory(url)
    public = b64(APP_KEY.public_key().public_bytes_raw())
    with sessions.begin() as session:
        crud.create_application(session, APP, os.urandom(32), "test")
        crud.create_application(session, SIGNED_APP, os.urandom(32), "test", None, public)
        read_only = crud.create_token(session, "read-only", "test")
        for _ in range(2):  # for DELETE /v1/admin/tokens/{id} to revoke
            crud.create_token(session, "admin", "test")
    end = dt.datetime(2100, 1, 1, tzinfo=dt.UTC)  # no quota: one large request cannot use it up
    make_customer(sessions, max_devices=MANY, inference_quota=None, contract_end=end)
    clock = Clock()
    with TestClient(create_app(settings_, clock)) as client:
        device = FakeDevice("dev-fuzz")
        body = device.licence_request(42, clock.now)
        answer = client.post("/v1/licences", json=body, headers=device.headers(body))
        assert answer.status_code == 200, answer.text
        yield Server(client, clock, device, answer.json()["licence"]["licence_id"], read_only)


def check(response: Any) -> None:
    """No 5xx; a 4xx is a JSON object with a ``detail``."""
    assert response.status_code < 500, (response.status_code, response.text)
    if response.status_code >= 400:
        answer = response.json()
        assert isinstance(answer, dict) and "detail" in answer, response.text


# --- device routes ------------------------------------------------------------------------

HEADER_BYTES = st.lists(st.integers(0x20, 0xFF), max_size=60).map(bytes)
"""Any header value a client can send (Latin-1 bytes, no line breaks)."""
SIGNATURES = st.sampled_from(["signed", "signed", "signed", "none", "other key"]) | HEADER_BYTES
"""How a device request is signed: by the device, not at all, by another key, or any bytes."""


def _configurations() -> st.SearchStrategy[Any]:
    """A signed configuration whose payload (and so, after signing, what is checked) is
    mutated, or any JSON value."""
    payload = shaped(
        {
            "application": st.sampled_from([SIGNED_APP, APP]),
            "customer": st.one_of(st.just({"id": 42}), shaped({"id": st.just(42)})),
            "models": st.one_of(st.just({"model-a": {}}), json_values),
        }
    )
    signed = payload.map(lambda p: {"payload": p, "signature": _sign_or_garbage(p, APP_KEY)})
    return st.one_of(signed, signed, signed, json_values)


def _sign_or_garbage(body: Any, key: Ed25519PrivateKey) -> str:
    """``body``'s signature, or a wrong one when it cannot be serialised (lone surrogates)."""
    try:
        return sign(body, key)
    except (ValueError, UnicodeError, RecursionError):
        return base64.b64encode(b"x" * 64).decode()


def _send_device(
    server: Server, path: str, body: Any, key: Ed25519PrivateKey, how: str | bytes
) -> None:
    headers: dict[str, str | bytes] = {"Content-Type": "application/json"}
    if isinstance(how, bytes):
        headers[SIGNATURE_HEADER] = how
    elif how == "signed":
        headers[SIGNATURE_HEADER] = _sign_or_garbage(body, key)
    elif how == "other key":
        headers[SIGNATURE_HEADER] = _sign_or_garbage(body, Ed25519PrivateKey.generate())
    check(server.client.post(path, content=encode(body), headers=headers))


@st.composite
def licence_requests(draw: st.DrawFn, server: Server) -> tuple[Any, Ed25519PrivateKey]:
    """A mutated licence request of the registered device or of a new one, and its key."""
    device = draw(st.sampled_from([server.device, None])) or FakeDevice()
    fields = {
        "device_id": st.just(device.id),
        "customer_id": usually(42, st.just(7)),
        "application": usually(APP, st.sampled_from([SIGNED_APP, SIGNED_APP, "unknown-app"])),
        "models": usually(["model-a"], st.lists(st.text(max_size=20), max_size=3)),
        "config_sha256": st.just(CONFIG_SHA),
        "signing_public_key": st.just(device.signing_public),
        "exchange_public_key": usually(
            device.exchange_public, st.sampled_from([b64(bytes(32)), b64(b"\x01" + bytes(31))])
        ),
        "timestamp": st.just(server.clock.now),
        "nonce": st.builds(new_nonce),
        "requested_inferences": usually(10, st.integers(min_value=1, max_value=2**63 - 1)),
        "configuration": _configurations(),
        "renews": st.sampled_from([server.licence_id, "no-such-licence"]),
    }
    return draw(bodies(fields)), device.signing_key


@given(data=st.data())
@FUZZ
def test_licence_requests(server: Server, data: st.DataObject) -> None:
    """``POST /v1/licences`` with mutated, then signed, requests."""
    body, key = data.draw(licence_requests(server))
    _send_device(server, "/v1/licences", body, key, data.draw(SIGNATURES))


@given(data=st.data())
@FUZZ
def test_usage_reports(server: Server, data: st.DataObject) -> None:
    """``POST /v1/usage`` with mutated, then signed, reports of the registered device."""
    device = server.device
    fields = {
        "device_id": st.sampled_from([device.id, "dev-unknown"]),
        "licence_id": st.sampled_from([server.licence_id, "no-such-licence"]),
        "report_id": st.text(min_size=1, max_size=20),
        "counter": st.one_of(st.integers(min_value=0, max_value=2**63 - 1), EDGE_INTS),
        "timestamp": st.just(server.clock.now),
        "nonce": st.builds(new_nonce),
    }
    body = data.draw(bodies(fields))
    _send_device(server, "/v1/usage", body, device.signing_key, data.draw(SIGNATURES))


RAW_BODIES = st.one_of(
    st.binary(max_size=300),
    st.sampled_from([b'{"counter": ' + b"9" * 5000 + b"}", b"[" * 100_000, b"NaN", b'"\\ud800"']),
)
"""Any bytes, and JSON that Python cannot parse: too many digits, too deeply nested."""


@given(raw=RAW_BODIES, path=st.sampled_from(["/v1/licences", "/v1/usage"]))
@FUZZ
def test_device_routes_take_any_bytes(server: Server, raw: bytes, path: str) -> None:
    check(server.client.post(path, content=raw, headers={"Content-Type": "application/json"}))


# --- admin routes -------------------------------------------------------------------------

segments = st.one_of(
    st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=30),
    st.integers().map(str),
    EDGE_INTS.map(str),
    st.sampled_from([APP, SIGNED_APP, "42", "dev-fuzz", "1", "2", "3", "4"]),
)
"""Path segments (percent-encoded when sent): names, ids, huge numbers, unicode."""
query_values = st.one_of(st.text(max_size=20), st.integers().map(str), EDGE_INTS.map(str))
queries = st.dictionaries(
    st.sampled_from(["limit", "offset", "customer_id", "device_id", "x"]), query_values, max_size=3
)
authorizations = st.one_of(
    st.just(f"Bearer {ADMIN_TOKEN}"),
    st.just(f"Bearer {ADMIN_TOKEN}"),
    st.just(f"Bearer {ADMIN_TOKEN}"),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40),
    HEADER_BYTES,
    HEADER_BYTES.map(lambda value: b"Bearer " + value),
)
"""Mostly the configured admin token (so the route itself runs), else any header value."""

KEKS = st.one_of(st.builds(lambda: base64.b64encode(os.urandom(32)).decode()), st.text(max_size=50))
PUBLIC_KEYS = st.one_of(
    st.builds(lambda: b64(Ed25519PrivateKey.generate().public_key().public_bytes_raw())),
    st.text(max_size=50),
)
MODEL_LISTS = st.one_of(st.none(), st.lists(st.text(max_size=20), max_size=4))
DATES = st.one_of(
    st.sampled_from(["2030-01-01T00:00:00Z", "9999-12-31T23:00:00-14:00", "2030-01-01", "x"]),
    st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
)
CUSTOMER_FIELDS = {
    "name": st.text(min_size=1, max_size=30),
    "contract_end": DATES,
    "inference_quota": st.one_of(st.integers(min_value=0), EDGE_INTS),
    "max_devices": st.one_of(st.integers(min_value=1, max_value=10), EDGE_INTS),
    "default_licence_seconds": st.one_of(st.integers(min_value=1, max_value=10**9), EDGE_INTS),
}


@dataclass(frozen=True)
class Route:
    """An admin route: its method, a path with ``{}`` for a segment, and its body's fields
    (None: no body)."""

    method: str
    path: str
    fields: dict[str, st.SearchStrategy[Any]] | None = None

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


ADMIN_ROUTES = [
    Route("GET", "/v1/health"),
    Route("GET", "/v1/public-key"),
    Route("GET", "/v1/admin/applications"),
    Route(
        "POST",
        "/v1/admin/applications",
        {
            "name": st.one_of(st.text(min_size=1, max_size=30), st.uuids().map(str)),
            "kek": KEKS,
            "models": MODEL_LISTS,
            "public_key": PUBLIC_KEYS,
        },
    ),
    Route("PUT", "/v1/admin/applications/{}/kek", {"kek": KEKS}),
    Route("PUT", "/v1/admin/applications/{}/public-key", {"public_key": PUBLIC_KEYS}),
    Route("PATCH", "/v1/admin/applications/{}", {"models": MODEL_LISTS}),
    Route("GET", "/v1/admin/customers"),
    Route("GET", "/v1/admin/customers/{}"),
    Route(
        "POST",
        "/v1/admin/customers",
        {"id": st.one_of(st.integers(min_value=0), EDGE_INTS), **CUSTOMER_FIELDS},
    ),
    Route("PATCH", "/v1/admin/customers/{}", CUSTOMER_FIELDS),
    Route("GET", "/v1/admin/devices"),
    Route(
        "PATCH",
        "/v1/admin/devices/{}",
        {
            "status": st.sampled_from(["active", "revoked", "gone"]),
            "duration_override_seconds": st.one_of(st.integers(min_value=1), EDGE_INTS),
        },
    ),
    Route("GET", "/v1/admin/licences"),
    Route("GET", "/v1/admin/usage"),
    Route("GET", "/v1/admin/usage/summary"),
    Route("GET", "/v1/admin/audit"),
    Route("GET", "/v1/admin/tokens"),
    Route("DELETE", "/v1/admin/tokens/{}"),
]


CONTENT_TYPES = usually(
    "application/json",
    st.sampled_from(["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", ""]),
)


def _url(path: str, segment: str) -> str:
    return path.replace("{}", quote(segment, safe=""))


@pytest.mark.parametrize("route", ADMIN_ROUTES, ids=str)
@given(data=st.data())
@FUZZ
def test_admin_routes(server: Server, route: Route, data: st.DataObject) -> None:
    """Each admin route (and the public reads) with a generated path segment, query string,
    ``Authorization`` and ``Content-Type``, and a mutated body or any bytes."""
    url = _url(route.path, data.draw(segments)) if "{}" in route.path else route.path
    authorization = data.draw(authorizations | st.just(f"Bearer {server.read_only}"))
    headers: dict[str, str | bytes] = {"Authorization": authorization}
    request: dict[str, Any] = {"params": data.draw(queries), "headers": headers}
    if route.fields is not None:
        headers["Content-Type"] = data.draw(CONTENT_TYPES)
        request["content"] = data.draw(bodies(route.fields).map(encode) | RAW_BODIES)
    check(server.client.request(route.method, url, **request))


def test_every_route_is_fuzzed(server: Server) -> None:
    """A route added to the app without a row here fails this test."""
    fuzzed = {(r.method, r.path.replace("{}", "*")) for r in ADMIN_ROUTES}
    fuzzed |= {("POST", "/v1/licences"), ("POST", "/v1/usage")}
    paths = server.client.app.openapi()["paths"]  # type: ignore[attr-defined]
    served = {
        (method.upper(), "/".join("*" if p.startswith("{") else p for p in path.split("/")))
        for path, methods in paths.items()
        for method in methods
    }
    assert served == fuzzed


# --- what the fuzzing found, as examples --------------------------------------------------

ADMIN_JSON = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"}


@pytest.mark.parametrize(
    ("method", "path", "body", "content_type", "says"),
    [
        # a lone surrogate in a value: FastAPI's 422 echoed it, which UTF-8 cannot encode
        ("POST", "/v1/admin/customers", b'{"id": 7, "name": "\\ud800"}', None, "surrogate"),
        # ... or in an unknown key, which the 422 names in its "loc"
        ("PATCH", "/v1/admin/devices/dev-fuzz", b'{"\\udfff": 1}', None, "surrogate"),
        # NaN and Infinity, which Python's parser takes and a JSON answer cannot hold
        ("POST", "/v1/admin/customers", b'{"id": NaN, "name": "x"}', None, "NaN"),
        ("PATCH", "/v1/admin/customers/42", b'{"max_devices": -Infinity}', None, "Infinity"),
        # another Content-Type: the raw body is echoed, and these bytes are not UTF-8
        ("PUT", "/v1/admin/applications/demo-app/kek", b"\xff\xfe", "text/plain", "UTF-8"),
    ],
)
def test_admin_bodies_no_answer_can_echo_are_400(
    server: Server, method: str, path: str, body: bytes, content_type: str | None, says: str
) -> None:
    """These were answered 500 "Internal Server Error" (the 422 failed to encode)."""
    headers = {**ADMIN_JSON, **({"Content-Type": content_type} if content_type else {})}
    response = server.client.request(method, path, content=body, headers=headers)
    assert response.status_code == 400, response.text
    assert says in response.json()["detail"]


def test_admin_422_still_echoes_what_json_can_hold(server: Server) -> None:
    """Only answers that cannot be JSON become 400: a wrong type is still FastAPI's 422."""
    body = {"id": 7, "name": "x", "max_devices": "many"}
    response = server.client.post("/v1/admin/customers", json=body, headers=ADMIN_JSON)
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert (error["loc"], error["input"]) == (["body", "max_devices"], "many")
