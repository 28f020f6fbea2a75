"""A wrongly pinned server key costs the customer nothing: end to end, a real ``sklicense``
server over HTTP on loopback (SQLite and PostgreSQL) and the runtime's licence client.

Before, the wrong key was found only in the signed answer, after the server had registered the
device (one of ``max_devices``) and drawn the licence's allowance (10,000 by default) from the
customer's quota, at every attempt: two ``skprotect run`` attempts drew 20,000.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import func, select
from tests.licensing.server_helpers import APP, CONFIG_SHA, make_application, make_customer

from sklicense.embedded import EmbeddedServer
from sklicense.models import Customer, Device, Licence
from skruntime.errors import LicenceError
from skruntime.licensing.client import LicenceClient
from skruntime.licensing.protocol import b64, unb64

CUSTOMER = 42
QUOTA = 100_000


class Recording(httpx.HTTPTransport):
    """An HTTP transport that notes the method and path of every request it sends."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(f"{request.method} {request.url.path}")
        return super().handle_request(request)


@pytest.fixture
def server(settings: Any, sessions: Any) -> Any:
    make_application(sessions)
    make_customer(sessions, id=CUSTOMER, inference_quota=QUOTA)
    with EmbeddedServer(settings) as running:
        yield running


def client(server: EmbeddedServer, state: Path, pinned: bytes, transport: Recording) -> Any:
    return LicenceClient(
        server.url,
        state_dir=state,
        server_public_key=pinned,
        application=APP,
        customer_id=CUSTOMER,
        models=["model-a"],
        config_sha256=CONFIG_SHA,
        transport=transport,
        persist_every=1,
    )


def charged(sessions: Any) -> tuple[int, int, int]:
    """The customer's granted inferences, its registered devices and the licences issued."""
    with sessions() as session:
        return (
            session.get(Customer, CUSTOMER).inferences_granted,
            session.scalar(select(func.count()).select_from(Device)),
            session.scalar(select(func.count()).select_from(Licence)),
        )


def test_a_wrong_pinned_key_costs_the_customer_nothing(server, sessions, tmp_path) -> None:
    presented = httpx.get(f"{server.url}/v1/public-key").json()["public_key"]
    wrong = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    transport = Recording()
    for _ in range(10):  # ten retries emptied a 100,000 quota
        with (
            client(server, tmp_path / "device", wrong, transport) as lc,
            pytest.raises(LicenceError) as raised,
        ):
            lc.ensure_licence()
        message = str(raised.value)
        assert f"at {server.url} presents the public key {presented}" in message
        assert f"pins {b64(wrong)} (server_public_key)" in message
        assert "nothing was drawn from the customer's quota" in message
    assert charged(sessions) == (0, 0, 0)
    assert transport.requests == ["GET /v1/public-key"] * 10
    assert not (tmp_path / "device" / "server_keys.json").exists()


def test_the_right_key_is_checked_once_and_costs_nothing_per_inference(
    server, sessions, tmp_path
) -> None:
    pinned = unb64(httpx.get(f"{server.url}/v1/public-key").json()["public_key"])
    state = tmp_path / "device"
    transport = Recording()
    with client(server, state, pinned, transport) as lc:
        licence = lc.ensure_licence()
        for _ in range(50):
            lc.consume()
    assert transport.requests == ["GET /v1/public-key", "POST /v1/licences", "POST /v1/usage"]
    assert charged(sessions) == (licence.inferences, 1, 1) and licence.inferences == 10_000
    again = Recording()  # the next process: the cached licence, and no key check
    with client(server, state, pinned, again) as lc:
        assert lc.ensure_licence() == licence
        lc.consume()
    assert again.requests == ["POST /v1/usage"]
