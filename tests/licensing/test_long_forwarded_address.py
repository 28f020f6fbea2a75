"""A client address longer than ``rate_counters.key`` holds: behind a proxy uvicorn trusts as
``FORWARDED_ALLOW_IPS="*"``, the address is the first ``X-Forwarded-For`` entry, whatever the
client sent. PostgreSQL refused its rate counter (``value too long``): a new device's licence
request and a bad admin token were answered 500, not counted (SQLite and PostgreSQL)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from tests.licensing.server_helpers import FakeDevice, make_application, make_customer
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from sklicense import crud
from sklicense.api.main import create_app
from sklicense.models import RateCounter

LONG = {"X-Forwarded-For": "h" * 400}


@pytest.fixture
def proxied(settings: Any, clock: Any, sessions: Any) -> Any:
    make_application(sessions)
    make_customer(sessions)
    app = ProxyHeadersMiddleware(create_app(settings, clock), trusted_hosts="*")
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def test_a_long_forwarded_address_is_counted(proxied, sessions, clock) -> None:
    device = FakeDevice("dev-1")
    body = device.licence_request(42, clock.now, requested_inferences=1)
    answer = proxied.post("/v1/licences", json=body, headers=device.headers(body) | LONG)
    assert answer.status_code == 200, answer.text
    bad_token = {"Authorization": "Bearer nope"} | LONG
    assert proxied.get("/v1/admin/customers", headers=bad_token).status_code == 401
    with sessions() as session:
        keys = set(session.scalars(select(RateCounter.key)))
    assert {len(key) for key in keys} <= {crud.RATE_KEY_CHARS, len("licence:dev-1")}
    assert any(key.startswith("new-device:hhh") for key in keys)


def test_long_rate_keys_stay_apart() -> None:
    one, other = "a" * 300 + "1", "a" * 300 + "2"
    assert crud.rate_key("short") == "short"
    assert len(crud.rate_key(one)) == crud.RATE_KEY_CHARS
    assert crud.rate_key(one) != crud.rate_key(other)
