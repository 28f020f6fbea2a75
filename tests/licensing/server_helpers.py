"""Helpers of the licence server tests: a fake device, a fake clock, provisioning."""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from sklicense import crud
from skruntime.licensing.protocol import SIGNATURE_HEADER, b64, new_nonce, sign

T0 = 1_780_000_000  # 2026-05-28T20:26:40Z: the injected "now" of most tests
APP = "demo-app"
CONFIG_SHA = "ab" * 32


class Clock:
    """An injectable server clock (Unix seconds)."""

    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class FakeDevice:
    """A device identity that builds and signs protocol messages."""

    def __init__(self, device_id: str | None = None) -> None:
        self.id = device_id or f"dev-{secrets.token_hex(4)}"
        self.signing_key = Ed25519PrivateKey.generate()
        self.exchange_key = X25519PrivateKey.generate()

    @property
    def signing_public(self) -> str:
        return b64(
            self.signing_key.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
        )

    @property
    def exchange_public(self) -> str:
        return b64(
            self.exchange_key.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
        )

    def licence_request(self, customer_id: int, now: int, **overrides: Any) -> dict[str, Any]:
        body = {
            "device_id": self.id,
            "customer_id": customer_id,
            "application": APP,
            "models": ["model-a"],
            "config_sha256": CONFIG_SHA,
            "signing_public_key": self.signing_public,
            "exchange_public_key": self.exchange_public,
            "timestamp": now,
            "nonce": new_nonce(),
        }
        body.update(overrides)
        return body

    def usage_report(
        self, licence_id: str, report_id: str, counter: int, now: int
    ) -> dict[str, Any]:
        return {
            "device_id": self.id,
            "licence_id": licence_id,
            "report_id": report_id,
            "counter": counter,
            "timestamp": now,
            "nonce": new_nonce(),
        }

    def headers(self, body: dict[str, Any], key: Ed25519PrivateKey | None = None) -> dict[str, str]:
        return {SIGNATURE_HEADER: sign(body, key or self.signing_key)}


def make_application(sessions: Any, kek: bytes | None = None, name: str = APP) -> None:
    with sessions.begin() as session:
        crud.create_application(session, name, kek, "test")


def make_customer(sessions: Any, **fields: Any) -> None:
    values: dict[str, Any] = {
        "id": 42,
        "name": "Acme",
        "contract_end": None,
        "inference_quota": 1000,
        "max_devices": 2,
        "default_licence_seconds": 7 * 86400,
    }
    values.update(fields)
    with sessions.begin() as session:
        crud.create_customer(session, "test", **values)


def random_kek() -> bytes:
    return base64.b64decode(base64.b64encode(os.urandom(32)))


def device_client(
    url: str, transport: Any, key: bytes, folder: Any, clock: Any, **options: Any
) -> Any:
    """A runtime's licence client of customer 42 for APP, renewing after every inference (one
    requested inference batch of 10), talking to ``url`` through ``transport``; ``options``
    replace those defaults or add others."""
    from skruntime.licensing.client import LicenceClient

    defaults = {"overlap_seconds": 60, "persist_every": 1, "requested_inferences": 10}
    return LicenceClient(
        url,
        state_dir=folder,
        server_public_key=key,
        application=APP,
        customer_id=42,
        models=["model-a"],
        config_sha256=CONFIG_SHA,
        clock=clock,
        transport=transport,
        **defaults | options,
    )


@contextmanager
def sqlite_server(
    folder: Path, state_dir: Path, clock: Clock, **customer: Any
) -> Iterator[tuple[Any, Path]]:
    """A client of the server app on a migrated SQLite file in ``folder``, the application and
    a customer (``make_customer``'s fields) provisioned, and the file; every engine of the
    file is disposed after, so the next test's file is not held open."""
    from fastapi.testclient import TestClient

    from sklicense import db
    from sklicense.api.main import create_app
    from sklicense.settings import Settings

    path = folder / "sklicense.db"
    url = f"sqlite:///{path}"
    db.upgrade(url)
    sessions = db.session_factory(url)
    make_application(sessions)
    make_customer(sessions, **customer)
    app = create_app(Settings(database_url=url, state_dir=state_dir), clock)
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            yield client, path
    finally:
        db.get_engine(url).dispose()
        db.get_engine(url, Settings().database_pool_timeout_s).dispose()
