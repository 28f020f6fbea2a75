"""POST /v1/licences: every deny reason (code and detail word for word), allow path, expiry math,
licence signature, KEK wrapping, rate limit, audit — on SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import func, select
from tests.licensing.server_helpers import (
    APP,
    T0,
    FakeDevice,
    make_application,
    make_customer,
    random_kek,
)

from sklicense import crud
from sklicense.crypto import kek_associated_data, kek_wrap_key
from sklicense.models import AuditLog, Customer, Device, SeenNonce
from skruntime.licensing.protocol import DENY_REASONS, unb64, verify

DAY = 86400


def ask(client: Any, device: FakeDevice, body: dict[str, Any], key: Any = None) -> Any:
    return client.post("/v1/licences", json=body, headers=device.headers(body, key))


def licence_of(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.json()
    return response.json()["licence"]


def assert_denied(response: Any, reason: str, detail: str, status: int = 403) -> None:
    assert reason in DENY_REASONS
    assert response.status_code == status, response.json()
    assert response.json() == {"decision": "deny", "reason": reason, "detail": detail}


@pytest.fixture
def setup(sessions: Any) -> Any:
    make_application(sessions)
    year = dt.datetime.fromtimestamp(T0 + 365 * DAY, dt.UTC)
    make_customer(sessions, contract_end=year, inference_quota=None)
    return sessions


def test_allow_default_duration_signed_and_audited(client, setup, clock) -> None:
    device = FakeDevice("dev-1")
    body = device.licence_request(42, clock.now)
    response = ask(client, device, body)
    document = response.json()
    licence = licence_of(response)
    assert licence["issued_at"] == T0
    assert licence["expires_at"] == T0 + 7 * DAY
    assert licence["inferences"] is None
    assert licence["request_nonce"] == body["nonce"]
    assert licence["wrapped_kek"] is None
    assert licence["device_id"] == "dev-1" and licence["customer_id"] == 42
    assert licence["application"] == APP and licence["models"] == ["model-a"]
    server_key = Ed25519PublicKey.from_public_bytes(
        unb64(client.get("/v1/public-key").json()["public_key"])
    )
    assert verify(licence, document["signature"], server_key)
    assert not verify(licence | {"inferences": 10**9}, document["signature"], server_key)
    with setup() as session:
        actions = [e.action for e in session.scalars(select(AuditLog).order_by(AuditLog.id))]
        assert actions[-2:] == ["device.register", "licence.allow"]
        assert session.get(Customer, 42).inferences_granted == 0
        assert session.get(Device, "dev-1").status == "active"


def test_allow_device_override(client, setup, clock) -> None:
    device = FakeDevice("dev-1")
    licence_of(ask(client, device, device.licence_request(42, clock.now)))
    with setup.begin() as session:
        crud.update_device(session, "dev-1", "test", duration_override_seconds=3 * DAY)
    clock.now += 100
    licence = licence_of(ask(client, device, device.licence_request(42, clock.now)))
    assert licence["issued_at"] == T0 + 100
    assert licence["expires_at"] == T0 + 100 + 3 * DAY


def test_allow_capped_at_contract_end(client, sessions, clock) -> None:
    make_application(sessions)
    end = dt.datetime.fromtimestamp(T0 + 2 * DAY, dt.UTC)
    make_customer(sessions, contract_end=end, inference_quota=None)
    device = FakeDevice()
    licence = licence_of(ask(client, device, device.licence_request(42, clock.now)))
    assert licence["expires_at"] == T0 + 2 * DAY
    assert licence["inferences"] is None


def test_requested_chunks_until_quota_exhausted(client, sessions, clock) -> None:
    make_application(sessions)
    make_customer(sessions, inference_quota=20)
    device = FakeDevice()
    granted = []
    for _ in range(3):
        body = device.licence_request(42, clock.now, requested_inferences=7)
        granted.append(licence_of(ask(client, device, body))["inferences"])
    assert granted == [7, 7, 6]
    body = device.licence_request(42, clock.now, requested_inferences=7)
    assert_denied(
        ask(client, device, body),
        "quota_exhausted",
        "customer 42 was granted its whole quota of 20 inferences",
    )
    with sessions() as session:
        assert session.get(Customer, 42).inferences_granted == 20


def test_kek_wrapped_to_device_round_trip(client, sessions, clock) -> None:
    kek = random_kek()
    make_application(sessions, kek=kek)
    make_customer(sessions)
    device = FakeDevice()
    licence = licence_of(ask(client, device, device.licence_request(42, clock.now)))
    wrapped = licence["wrapped_kek"]
    ephemeral = X25519PublicKey.from_public_bytes(unb64(wrapped["ephemeral_public_key"]))
    key = kek_wrap_key(device.exchange_key.exchange(ephemeral), licence["licence_id"])
    aad = kek_associated_data(licence["licence_id"], device.id, APP)
    plain = AESGCM(key).decrypt(unb64(wrapped["nonce"]), unb64(wrapped["ciphertext"]), aad)
    assert plain == kek


@pytest.mark.parametrize(
    ("case", "reason", "detail"),
    [
        ("unknown_application", "unknown_application", "application 'nope' is not known"),
        ("unknown_customer", "unknown_customer", "customer 999 is not known"),
        (
            "bad_signature_new",
            "bad_signature",
            "the request signature does not verify with the key in the request",
        ),
        (
            "stale_past",
            "stale_request",
            f"request timestamp {T0 - 301} differs from the server time {T0} by 301 s; "
            "allowed ±300 s: check the device clock",
        ),
        (
            "stale_future",
            "stale_request",
            f"request timestamp {T0 + 301} differs from the server time {T0} by 301 s; "
            "allowed ±300 s: check the device clock",
        ),
    ],
)
def test_deny_on_new_device(client, setup, clock, case, reason, detail) -> None:
    device = FakeDevice()
    overrides: dict[str, Any] = {
        "unknown_application": {"application": "nope"},
        "unknown_customer": {"customer_id": 999},
        "stale_past": {"timestamp": T0 - 301},
        "stale_future": {"timestamp": T0 + 301},
    }.get(case, {})
    customer_id = overrides.pop("customer_id", 42)
    body = device.licence_request(customer_id, clock.now, **overrides)
    key = Ed25519PrivateKey.generate() if case == "bad_signature_new" else None
    assert_denied(ask(client, device, body, key), reason, detail)
    with setup() as session:
        denials = session.scalars(select(AuditLog).where(AuditLog.action == "licence.deny"))
        # anyone can send unsigned requests: they are logged, not audited
        assert [e.detail["reason"] for e in denials] == (
            [] if reason == "bad_signature" else [reason]
        )
        assert session.get(Device, device.id) is None


def test_timestamp_window_edge_allowed(client, setup, clock) -> None:
    device = FakeDevice()
    licence_of(ask(client, device, device.licence_request(42, clock.now, timestamp=T0 - 300)))


def test_deny_bad_signature_known_device(client, setup, clock) -> None:
    device = FakeDevice("dev-1")
    licence_of(ask(client, device, device.licence_request(42, clock.now)))
    body = device.licence_request(42, clock.now)
    assert_denied(
        ask(client, device, body, Ed25519PrivateKey.generate()),
        "bad_signature",
        "the request signature does not verify with the device's registered key",
    )
    missing = client.post("/v1/licences", json=device.licence_request(42, clock.now))
    assert missing.json()["reason"] == "bad_signature"


def test_deny_device_key_mismatch(client, setup, clock) -> None:
    device = FakeDevice("dev-1")
    licence_of(ask(client, device, device.licence_request(42, clock.now)))
    other = FakeDevice("dev-1")
    body = device.licence_request(42, clock.now, exchange_public_key=other.exchange_public)
    assert_denied(
        ask(client, device, body),
        "device_key_mismatch",
        "device dev-1 is registered with other public keys than the request presents",
    )
    # an impostor signing with its own key is refused on the signature
    body = other.licence_request(42, clock.now)
    assert ask(client, other, body).json()["reason"] == "bad_signature"


def test_a_granted_request_sent_again_gets_the_same_licence_uncharged(client, setup, clock) -> None:
    """A device whose answer was lost sends the identical request again: the same licence comes
    back (its KEK wrapped anew to the same device), the quota is not charged twice."""
    make_application(setup, kek=random_kek(), name="kek-app")
    with setup.begin() as session:
        session.get(Customer, 42).inference_quota = 100
    device = FakeDevice("dev-1")
    body = device.licence_request(42, clock.now, application="kek-app", requested_inferences=30)
    first = licence_of(ask(client, device, body))
    clock.now += 60
    again = licence_of(ask(client, device, body))
    assert {k: v for k, v in again.items() if k != "wrapped_kek"} == {
        k: v for k, v in first.items() if k != "wrapped_kek"
    }
    assert again["wrapped_kek"] is not None and again["wrapped_kek"] != first["wrapped_kek"]
    with setup() as session:
        assert session.get(Customer, 42).inferences_granted == 30
        actions = [e.action for e in session.scalars(select(AuditLog).order_by(AuditLog.id))]
        assert actions[-2:] == ["licence.allow", "licence.resend"]


def test_deny_replayed_request(client, setup, clock) -> None:
    """A nonce is answered with a licence once: sent again for another request, after a denial,
    or once the device is revoked, it is ``replayed_request``."""
    device = FakeDevice("dev-1")
    body = device.licence_request(42, clock.now)
    licence_of(ask(client, device, body))
    detail = f"nonce {body['nonce']} was already used by this device"
    other = body | {"models": ["model-b"]}  # same nonce, signed anew for another request
    assert_denied(ask(client, device, other), "replayed_request", detail)
    denied = device.licence_request(43, clock.now)  # unknown customer: denied, nonce kept
    assert ask(client, device, denied).json()["reason"] == "unknown_customer"
    assert_denied(
        ask(client, device, denied),
        "replayed_request",
        f"nonce {denied['nonce']} was already used by this device",
    )
    with setup.begin() as session:
        crud.update_device(session, "dev-1", "test", status="revoked")
    assert_denied(ask(client, device, body), "replayed_request", detail)


def test_deny_device_revoked(client, setup, clock) -> None:
    device = FakeDevice("dev-1")
    licence_of(ask(client, device, device.licence_request(42, clock.now)))
    with setup.begin() as session:
        crud.update_device(session, "dev-1", "test", status="revoked")
    assert_denied(
        ask(client, device, device.licence_request(42, clock.now)),
        "device_revoked",
        "device dev-1 is revoked",
    )


def test_deny_contract_ended(client, sessions, clock) -> None:
    make_application(sessions)
    end = dt.datetime.fromtimestamp(T0, dt.UTC)
    make_customer(sessions, contract_end=end, inference_quota=None)
    device = FakeDevice()
    assert_denied(
        ask(client, device, device.licence_request(42, clock.now)),
        "contract_ended",
        "the contract of customer 42 ended at 2026-05-28T20:26:40+00:00",
    )


def test_a_contract_ending_within_the_second_is_ended(client, sessions, clock) -> None:
    """Licences are in whole seconds: a contract ending half a second after the request got a
    licence expiring as it was issued (the runtime refuses it as faulty), and was charged."""
    make_application(sessions)
    end = dt.datetime.fromtimestamp(T0, dt.UTC) + dt.timedelta(milliseconds=500)
    make_customer(sessions, contract_end=end, inference_quota=10)
    device = FakeDevice()
    assert_denied(
        ask(client, device, device.licence_request(42, clock.now)),
        "contract_ended",
        "the contract of customer 42 ended at 2026-05-28T20:26:40.500000+00:00",
    )
    clock.now -= 1  # a second earlier: a licence of one second, up to the contract end
    licence = licence_of(ask(client, device, device.licence_request(42, clock.now)))
    assert (licence["issued_at"], licence["expires_at"]) == (T0 - 1, T0)


def test_deny_too_many_devices(client, setup, clock) -> None:
    for _ in range(2):
        device = FakeDevice()
        body = device.licence_request(42, clock.now, requested_inferences=1)
        licence_of(ask(client, device, body))
    third = FakeDevice()
    assert_denied(
        ask(client, third, third.licence_request(42, clock.now)),
        "too_many_devices",
        "customer 42 already has 2 registered devices (maximum 2)",
    )


def test_deny_device_customer_mismatch(client, setup, clock) -> None:
    make_customer(setup, id=43, name="Other")
    device = FakeDevice("dev-1")
    licence_of(ask(client, device, device.licence_request(42, clock.now, requested_inferences=1)))
    assert_denied(
        ask(client, device, device.licence_request(43, clock.now)),
        "device_customer_mismatch",
        "device dev-1 is registered to customer 42, not customer 43",
    )


def test_rate_limited(client, setup, clock, settings) -> None:
    device = FakeDevice()
    limit = settings.licence_requests_per_minute
    clock.now = T0 - T0 % 60  # start of a window
    for _ in range(limit):
        body = device.licence_request(42, clock.now, requested_inferences=1)
        licence_of(ask(client, device, body))
    response = ask(client, device, device.licence_request(42, clock.now))
    assert_denied(
        response,
        "rate_limited",
        f"device {device.id} sent more than {limit} licence requests this minute; retry later",
        status=429,
    )
    clock.now += 60
    licence_of(ask(client, device, device.licence_request(42, clock.now, requested_inferences=1)))


def test_new_devices_are_rate_limited_per_sender_unaudited(setup, clock, settings) -> None:
    """Anyone can make a fresh identity per request: past the limit, requests of unregistered
    devices from one address are refused (429) without an audit or nonce row; registered
    devices are not held up."""
    from fastapi.testclient import TestClient

    from sklicense.api.main import create_app

    clock.now = T0 - T0 % 60  # start of a window
    limited = dataclasses.replace(settings, new_device_requests_per_minute=2)
    known = FakeDevice("dev-known")
    with TestClient(create_app(limited, clock)) as client:
        licence_of(ask(client, known, known.licence_request(42, clock.now)))  # new device 1
        fresh = FakeDevice()
        licence_of(ask(client, fresh, fresh.licence_request(42, clock.now)))  # new device 2
        with setup() as session:
            audited = session.scalar(select(func.count()).select_from(AuditLog))
            nonces = session.scalar(select(func.count()).select_from(SeenNonce))
        flood = FakeDevice()
        response = ask(client, flood, flood.licence_request(42, clock.now))
        assert_denied(
            response,
            "rate_limited",
            "more than 2 licence requests of unregistered devices came from testclient this "
            "minute; retry later",
            status=429,
        )
        with setup() as session:
            assert session.scalar(select(func.count()).select_from(AuditLog)) == audited
            assert session.scalar(select(func.count()).select_from(SeenNonce)) == nonces
            assert session.get(Device, flood.id) is None
        licence_of(ask(client, known, known.licence_request(42, clock.now)))
        clock.now += 60  # the next minute: counted again (denied here by max_devices, audited)
        response = ask(client, flood, flood.licence_request(42, clock.now))
        assert response.json()["reason"] == "too_many_devices"


def test_malformed_request_is_422(client, setup, clock) -> None:
    device = FakeDevice()
    body = device.licence_request(42, clock.now, nonce="short")
    response = ask(client, device, body)
    assert response.status_code == 422
    assert response.json()["detail"][0]["msg"] == "Value error, must be 32 lowercase hex characters"


def test_deny_unknown_model_when_application_lists_models(client, sessions, clock) -> None:
    with sessions.begin() as session:
        crud.create_application(session, APP, None, "test", models=["model-a", "model-b"])
    make_customer(
        sessions, inference_quota=None, contract_end=dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    )
    device = FakeDevice()
    body = device.licence_request(42, clock.now, models=["model-b", "model-z", "model-y"])
    assert_denied(
        ask(client, device, body),
        "unknown_model",
        "application 'demo-app' has no model named 'model-y', 'model-z'",
    )
    body = device.licence_request(42, clock.now, models=["model-b"])
    assert licence_of(ask(client, device, body))["models"] == ["model-b"]


def test_old_nonces_are_forgotten_and_stay_refused_as_stale(client, setup, clock) -> None:
    device = FakeDevice()
    first = device.licence_request(42, clock.now)
    licence_of(ask(client, device, first))
    clock.now += 601
    licence_of(ask(client, device, device.licence_request(42, clock.now)))
    with setup() as session:
        nonces = session.scalars(select(SeenNonce.nonce).where(SeenNonce.device_id == device.id))
        assert list(nonces) != [] and first["nonce"] not in list(
            session.scalars(select(SeenNonce.nonce))
        )
    assert ask(client, device, first).json()["reason"] == "stale_request"


def test_sqlite_device_requests_take_turns_in_one_lock_per_database(tmp_path, monkeypatch) -> None:
    """SQLite: one process-wide lock per database file (relative and absolute URLs alike), so
    waiting requests block on it (up to their timeout) instead of polling the busy handler;
    PostgreSQL: none."""
    from sqlalchemy.exc import TimeoutError as PoolTimeoutError

    from sklicense import db

    monkeypatch.chdir(tmp_path)
    absolute = f"sqlite:///{tmp_path / 'a.db'}"
    with db.device_writes("sqlite:///a.db", 1):
        with pytest.raises(PoolTimeoutError), db.device_writes(absolute, 0.1):
            pass
        with db.device_writes("sqlite:///b.db", 0.1):
            pass
    postgres = "postgresql://u@h/d"
    with (
        db.device_writes(absolute, 0.1),
        db.device_writes(postgres, 0.1),
        db.device_writes(postgres, 0.1),
    ):
        pass


@pytest.mark.parametrize(
    ("host", "counted_as"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::9", "2001:db8:1:2::/64"),  # the same host's other address
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("testclient", "testclient"),
    ],
)
def test_new_devices_are_counted_per_ipv4_address_or_ipv6_64(host: str, counted_as: str) -> None:
    """One host usually holds a whole IPv6 /64: counting single addresses would not limit it."""
    from starlette.requests import Request

    from sklicense.api.routes.licences import _sender

    request = Request({"type": "http", "client": (host, 1234), "headers": []})
    assert _sender(request) == counted_as
