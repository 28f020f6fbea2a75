"""The runtime's licence client against a fake server that follows skruntime.licensing.protocol."""

from __future__ import annotations

import json
import os
import re
import stat
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from skruntime.errors import (
    ClockRollbackError,
    LicenceDeniedError,
    LicenceError,
    LicenceUnavailableError,
    QuotaExhaustedError,
)
from skruntime.licensing import identity as identity_module
from skruntime.licensing import protocol
from skruntime.licensing.client import LicenceClient
from skruntime.licensing.identity import DeviceIdentity

URL = "http://licence.test"
T0 = 1_750_000_000
DAY = 24 * 3600
_MAX_TIME = 253_402_300_799


class Clock:
    def __init__(self, t: int = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class FakeServer:
    """GET /v1/public-key, POST /v1/licences and /v1/usage per protocol.py, with switches for
    failures."""

    def __init__(
        self, *, duration: int = 365 * DAY, quota: int | None = None, kek: bytes | None = None
    ) -> None:
        self.key = Ed25519PrivateKey.generate()
        self.public_key = self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.duration = duration
        self.contract_end: int | None = None  # licences never outlive it
        self.quota = quota
        self.kek = kek
        self.up = True
        self.time: int | None = None  # the server's clock; None: the request's timestamp
        self.deny: tuple[str, str] | None = None
        self.tamper: Any = None  # callable(document) -> document
        self.answer: Any = None  # callable(request) -> response: replaces licence answers
        self.signs = True  # sign the answers to device requests (protocol.answer_message)
        self.calls: list[str] = []  # the path of every request that reached the server
        self.lose_usage_answers = 0  # apply the report, then answer 500
        self.devices: dict[str, dict[str, str]] = {}
        self.nonces: set[str] = set()
        self.licence_requests: list[dict[str, Any]] = []
        self.usage_requests: list[dict[str, Any]] = []
        self.report_ids: set[str] = set()
        self.counters: dict[str, int] = {}  # licence id -> highest counter applied
        self.issued: dict[str, dict[str, Any]] = {}  # licence id -> licence
        self.kept: list[dict[str, Any]] = []  # the requests answered "keep"
        self.knows_renews = True  # False: a server older than the renews field (422)

    @property
    def used(self) -> int:
        return sum(self.counters.values())

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        if not self.up:
            raise httpx.ConnectError("connection refused", request=request)
        self.calls.append(request.url.path)
        if self.answer is not None and request.url.path == "/v1/licences":
            return self.answer(request)
        response = self.respond(request)
        if request.method == "POST" and self.signs:
            data = json.loads(response.content)
            message = protocol.answer_message(
                request.url.path, response.status_code, request.content, data
            )
            response.headers[protocol.SIGNATURE_HEADER] = protocol.sign(message, self.key)
        return response

    def respond(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/public-key":
            return httpx.Response(
                200, json={"algorithm": "Ed25519", "public_key": protocol.b64(self.public_key)}
            )
        body = json.loads(request.content)
        signature = request.headers[protocol.SIGNATURE_HEADER]
        assert request.content == protocol.canonical_bytes(body)
        if body["nonce"] in self.nonces:
            return self.denial("replayed_request")
        self.nonces.add(body["nonce"])
        if request.url.path == "/v1/licences":
            device = self.devices.setdefault(
                body["device_id"],
                {"sign": body["signing_public_key"], "exchange": body["exchange_public_key"]},
            )
            if not self.check(body, signature, device):
                return self.denial("bad_signature")
            if self.time is not None and abs(body["timestamp"] - self.time) > 300:
                return self.denial("stale_request", f"the server's time is {self.time}")
            if "renews" in body and not self.knows_renews:
                error = {"type": "extra_forbidden", "loc": ["renews"], "msg": "Extra inputs"}
                return httpx.Response(422, json={"detail": [error]})
            self.licence_requests.append(body)
            return self.licence(body, device)
        if request.url.path == "/v1/usage":
            if not self.check(body, signature, self.devices[body["device_id"]]):
                return self.denial("bad_signature")
            if self.time is not None and abs(body["timestamp"] - self.time) > 300:
                return self.denial("stale_request", f"the server's time is {self.time}")
            self.usage_requests.append(body)
            if body["report_id"] not in self.report_ids:
                self.report_ids.add(body["report_id"])
                lid = body["licence_id"]
                self.counters[lid] = max(self.counters.get(lid, 0), body["counter"])
            if self.lose_usage_answers:
                self.lose_usage_answers -= 1
                return httpx.Response(500, json={"error": "lost"})
            return httpx.Response(200, json={"accepted": True, "report_id": body["report_id"]})
        return httpx.Response(404)

    @staticmethod
    def check(body: dict[str, Any], signature: str, device: dict[str, str]) -> bool:
        key = Ed25519PublicKey.from_public_bytes(protocol.unb64(device["sign"]))
        return protocol.verify(body, signature, key)

    @staticmethod
    def denial(reason: str, detail: str = "") -> httpx.Response:
        return httpx.Response(403, json={"decision": "deny", "reason": reason, "detail": detail})

    def licence(self, body: dict[str, Any], device: dict[str, str]) -> httpx.Response:
        if self.deny is not None:
            return self.denial(*self.deny)
        now = body["timestamp"] if self.time is None else self.time
        expires_at = min(now + self.duration, self.contract_end or _MAX_TIME)
        renewed = self.issued.get(body.get("renews", ""))
        if renewed is not None and renewed["expires_at"] == expires_at:
            self.kept.append(body)
            keep = {"licence_id": renewed["licence_id"], "expires_at": expires_at}
            return httpx.Response(200, json={"decision": "keep", "detail": ""} | keep)
        inferences = None
        if self.quota is not None:
            inferences = self.quota - self.used
            if inferences <= 0:
                return self.denial("quota_exhausted", f"{self.used} of {self.quota} used")
            inferences = min(inferences, body.get("requested_inferences") or inferences)
        licence_id = str(uuid.uuid4())
        licence = {
            "licence_id": licence_id,
            "device_id": body["device_id"],
            "customer_id": body["customer_id"],
            "application": body["application"],
            "models": body["models"],
            "issued_at": now,
            "expires_at": expires_at,
            "inferences": inferences,
            "request_nonce": body["nonce"],
            "wrapped_kek": self.wrap(licence_id, body, device["exchange"]) if self.kek else None,
        }
        self.issued[licence_id] = licence
        document = {"licence": licence, "signature": protocol.sign(licence, self.key)}
        if self.tamper is not None:
            document = self.tamper(document)
        return httpx.Response(200, json=document)

    def wrap(self, licence_id: str, body: dict[str, Any], exchange: str) -> dict[str, str]:
        assert self.kek is not None
        ephemeral = X25519PrivateKey.generate()
        shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(protocol.unb64(exchange)))
        key = HKDF(
            algorithm=hashes.SHA256(),
            length=32,
            salt=None,
            info=protocol.KEK_WRAP_INFO + licence_id.encode(),
        ).derive(shared)
        nonce = os.urandom(12)
        aad = protocol.canonical_bytes(
            {
                "licence_id": licence_id,
                "device_id": body["device_id"],
                "application": body["application"],
            }
        )
        ephemeral_public = ephemeral.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return {
            "ephemeral_public_key": protocol.b64(ephemeral_public),
            "nonce": protocol.b64(nonce),
            "ciphertext": protocol.b64(AESGCM(key).encrypt(nonce, self.kek, aad)),
        }


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def server() -> FakeServer:
    return FakeServer()


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


def make_client(server: FakeServer, state: Path, clock: Clock, **kw: Any) -> LicenceClient:
    options: dict[str, Any] = {
        "state_dir": state,
        "server_public_key": server.public_key,
        "application": "app",
        "customer_id": 7,
        "models": ["net"],
        "config_sha256": "ab" * 32,
        "clock": clock,
        "transport": server.transport(),
    }
    options.update(kw)
    client = LicenceClient(URL, **options)
    client.resend_delays = ()  # counted per request here; resends: test_lost_answers_are_resent
    return client


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_first_licence_cache_and_permissions(server, state, clock) -> None:
    client = make_client(server, state, clock)
    licence = client.ensure_licence()
    assert len(server.licence_requests) == 1
    request = server.licence_requests[0]
    assert request["customer_id"] == 7 and request["application"] == "app"
    assert request["models"] == ["net"] and request["config_sha256"] == "ab" * 32
    assert request["timestamp"] == T0 and request["device_id"] == client.identity.device_id
    assert licence.issued_at == T0 and licence.expires_at == T0 + 365 * DAY
    assert licence.device_id == client.identity.device_id and licence.inferences is None
    # cached: no new request, in this client and in a new one (another process)
    clock.t += 10 * DAY
    assert client.ensure_licence() == licence
    client.close()
    other = make_client(server, state, clock)
    assert other.ensure_licence() == licence
    assert len(server.licence_requests) == 1
    other.close()
    assert mode(state) == 0o700
    for name in ("device.key", "device.json", "licence_app.json", "clock.json"):
        assert mode(state / name) == 0o600, name
    info = json.loads((state / "device.json").read_text())
    assert info["device_id"] == licence.device_id and len(uuid.UUID(hex=info["device_id"]).hex)


def test_identity_stable_and_unsafe_key_refused(state) -> None:
    first = DeviceIdentity.load_or_create(state)
    second = DeviceIdentity.load_or_create(state)
    assert first.device_id == second.device_id
    assert first.signing_public_key == second.signing_public_key
    assert first.exchange_public_key == second.exchange_public_key
    body = {"device_id": first.device_id, "nonce": protocol.new_nonce()}
    public = Ed25519PublicKey.from_public_bytes(first.signing_public_key)
    assert protocol.verify(body, first.sign(body), public)
    os.chmod(state / "device.key", 0o644)
    with pytest.raises(LicenceError, match="chmod 600"):
        DeviceIdentity.load_or_create(state)


def test_state_dir_from_environment(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SKRUNTIME_STATE_DIR", str(tmp_path / "env_state"))
    identity = DeviceIdentity.load_or_create()
    assert identity.state_dir == tmp_path / "env_state"
    assert (tmp_path / "env_state" / "device.key").exists()


def test_renewal_inside_overlap_starts_at_request_time(state, clock) -> None:
    server = FakeServer(duration=100 * DAY)
    client = make_client(server, state, clock, overlap_seconds=30 * DAY)
    first = client.ensure_licence()
    client.consume(3)
    clock.t = T0 + 69 * DAY  # before the overlap window: no request
    assert client.ensure_licence() == first
    assert len(server.licence_requests) == 1
    clock.t = T0 + 75 * DAY  # inside: renew
    renewed = client.ensure_licence()
    assert renewed.licence_id != first.licence_id
    assert renewed.issued_at == T0 + 75 * DAY
    assert renewed.expires_at == T0 + 175 * DAY
    # the old licence's usage was reported before the renewal, exactly
    assert server.counters == {first.licence_id: 3}
    assert json.loads((state / "licence_app.json").read_text())["licence"]["licence_id"] == (
        renewed.licence_id
    )
    client.close()


def test_licence_shorter_than_overlap_is_renewed_from_its_half_life(state, clock) -> None:
    """Every renewal draws a new allowance from the quota: a licence no longer than the overlap
    (the defaults: 30-day licences, 30-day overlap) is not renewed on every use, but once half of
    it has run, so the device keeps at least half a licence of offline time."""
    server = FakeServer(duration=10 * DAY, quota=10**9)
    client = make_client(server, state, clock, overlap_seconds=30 * DAY, retry_seconds=300)
    first = client.ensure_licence()
    for _ in range(4 * 19):  # one inference every 6 hours for 19 days
        client.consume(1)
        clock.t += 6 * 3600
    issued = [r["timestamp"] - T0 for r in server.licence_requests]
    assert issued == [0, 5 * DAY, 10 * DAY, 15 * DAY]  # before: every 6 hours from the start
    assert client.ensure_licence().expires_at == T0 + 25 * DAY
    assert server.counters[first.licence_id] == 20
    client.close()


def test_a_licence_at_the_contract_end_is_checked_daily_not_renewed(state, clock) -> None:
    """In a contract's last month a renewal cannot extend the licence: the renewal names the
    licence it renews and the server answers ``keep``, free of charge, once a day; only a used
    up allowance draws more quota. Before, the first such renewal drew a new allowance (the
    old one's rest was lost), then nothing was asked until the licence expired."""
    server = FakeServer(duration=365 * DAY, quota=10**9)
    server.contract_end = T0 + 40 * DAY
    client = make_client(server, state, clock, overlap_seconds=30 * DAY, requested_inferences=50)
    client.ensure_licence()  # expires at the contract end: renewal window from day 10
    for _ in range(4 * 20):  # one inference every 6 hours until day 20
        client.consume(1)
        clock.t += 6 * 3600
    client.close()
    other = make_client(server, state, clock, requested_inferences=50)  # another process
    for _ in range(4 * 19):  # until day 39: renewed only when 50 inferences are used up
        other.consume(1)
        clock.t += 6 * 3600
    kept = [(r["timestamp"] - T0) / DAY for r in server.kept]
    charged = [(r["timestamp"] - T0) / DAY for r in server.licence_requests if r not in server.kept]
    assert charged == [0, 12.5, 25, 37.5]  # before: 0, 10, 22.5, 35
    assert kept == [10, 11, 12, *(13.5 + d for d in range(12)), *range(26, 38), 38.5]
    assert [lic["inferences"] for lic in server.issued.values()] == [50] * 4
    cached = json.loads((state / "licence_app.json").read_text())
    assert (cached["at_contract_end"], cached["checked_at"]) == (True, T0 + 38 * DAY + DAY // 2)
    assert cached["licence"]["expires_at"] == T0 + 40 * DAY
    server.contract_end = T0 + 100 * DAY  # extended: seen at the next check, a day later
    clock.t = T0 + 39 * DAY + DAY // 2
    assert other.ensure_licence().expires_at == T0 + 100 * DAY
    other.close()


def test_a_server_older_than_renews_renews_as_before(state, clock, caplog) -> None:
    """A server of the previous release refuses the unknown ``renews`` (its signed 422): the
    request is sent again without it, and renewed as before, with a warning."""
    server = FakeServer(duration=365 * DAY, quota=10**9)
    server.contract_end = T0 + 40 * DAY
    server.knows_renews = False
    client = make_client(server, state, clock, overlap_seconds=30 * DAY)
    first = client.ensure_licence()
    clock.t = T0 + 10 * DAY
    renewed = client.ensure_licence()
    assert renewed.licence_id != first.licence_id and renewed.expires_at == first.expires_at
    assert ["renews" in r for r in server.licence_requests] == [False, False]
    assert "does not know the renews field" in caplog.text
    client.close()


def test_a_keep_of_another_licence_is_a_bad_answer(state, clock, caplog) -> None:
    server = FakeServer(duration=365 * DAY)
    server.contract_end = T0 + 40 * DAY
    client = make_client(server, state, clock, overlap_seconds=30 * DAY)
    licence = client.ensure_licence()
    server.issued[licence.licence_id]["licence_id"] = "another"
    clock.t = T0 + 10 * DAY
    assert client.ensure_licence() == licence  # kept until it expires, with a warning
    assert "answered that licence 'another'" in caplog.text and "server is faulty" in caplog.text
    assert "at_contract_end" not in json.loads((state / "licence_app.json").read_text())
    client.close()


def test_server_down_within_and_after_validity(state, clock) -> None:
    server = FakeServer(duration=100 * DAY)
    client = make_client(server, state, clock, overlap_seconds=30 * DAY)
    licence = client.ensure_licence()
    server.up = False
    clock.t = T0 + 80 * DAY  # inside the overlap window: renewal fails, cached licence works
    assert client.ensure_licence() == licence
    client.consume()
    clock.t = T0 + 99 * DAY
    assert client.ensure_licence() == licence
    clock.t = T0 + 100 * DAY  # expired
    with pytest.raises(LicenceUnavailableError) as err:
        client.ensure_licence()
    text = str(err.value)
    assert "expired at" in text and URL in text and "unreachable" in text
    with pytest.raises(LicenceUnavailableError):
        client.consume()
    server.up = True  # back: a new licence starts at the request time
    assert client.ensure_licence().issued_at == T0 + 100 * DAY


def test_no_licence_and_server_down(server, state, clock) -> None:
    server.up = False
    client = make_client(server, state, clock)
    with pytest.raises(LicenceUnavailableError, match="No licence"):
        client.ensure_licence()


def test_denial_reason_propagates(server, state, clock) -> None:
    server.deny = ("unknown_customer", "customer 7 is not known")
    client = make_client(server, state, clock)
    with pytest.raises(LicenceDeniedError) as err:
        client.ensure_licence()
    assert err.value.reason == "unknown_customer"
    assert err.value.detail == "customer 7 is not known"
    assert "unknown_customer" in str(err.value)


def test_revoked_during_overlap_drops_licence(state, clock) -> None:
    server = FakeServer(duration=100 * DAY)
    client = make_client(server, state, clock, overlap_seconds=30 * DAY)
    client.ensure_licence()
    server.deny = ("device_revoked", "")
    clock.t = T0 + 80 * DAY
    with pytest.raises(LicenceDeniedError, match="device_revoked"):
        client.ensure_licence()
    assert not (state / "licence_app.json").exists()


def _modify(field: str, value: Any):
    def tamper(document: dict[str, Any]) -> dict[str, Any]:
        document["licence"][field] = value
        return document

    return tamper


def test_tampered_licence_refused(server, state, clock) -> None:
    server.tamper = _modify("expires_at", T0 + 10 * 365 * DAY)
    client = make_client(server, state, clock)
    with pytest.raises(LicenceError, match="signature"):
        client.ensure_licence()
    assert not (state / "licence_app.json").exists()


def test_tampered_cache_is_ignored(server, state, clock) -> None:
    client = make_client(server, state, clock)
    client.ensure_licence()
    client.close()
    path = state / "licence_app.json"
    document = json.loads(path.read_text())
    document["licence"]["inferences"] = None
    document["licence"]["expires_at"] += 1000 * DAY
    path.write_text(json.dumps(document))
    os.chmod(path, 0o600)
    other = make_client(server, state, clock)
    assert other.ensure_licence().expires_at == T0 + 365 * DAY
    assert len(server.licence_requests) == 2


def _new_public_key() -> bytes:
    return Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def test_wrong_server_key_refused_before_any_licence_request(server, state, clock) -> None:
    """A wrongly pinned key was found only in the signed answer, after the server had
    registered the device and drawn the licence's allowance from the quota: at every attempt."""
    other_key = _new_public_key()
    for _ in range(2):
        client = make_client(server, state, clock, server_public_key=other_key)
        with pytest.raises(
            LicenceError,
            match=rf"at {URL} presents the public key {re.escape(protocol.b64(server.public_key))}"
            rf".*pins {re.escape(protocol.b64(other_key))} \(server_public_key\).*No licence "
            "was requested",
        ):
            client.ensure_licence()
        client.close()
    assert server.calls == ["/v1/public-key"] * 2  # never noted as checked: asked every time
    assert server.licence_requests == [] and server.devices == {}


def test_the_server_key_is_asked_once_per_server_and_pinned_key(server, state, clock) -> None:
    client = make_client(server, state, clock)
    client.ensure_licence()
    client.close()
    pinned = protocol.b64(server.public_key)  # its signed licence answer: "signs" too
    assert json.loads((state / "server_keys.json").read_text()) == {
        "checked": {URL: pinned},
        "signs": {URL: pinned},
    }
    assert mode(state / "server_keys.json") == 0o600
    clock.t += 366 * DAY  # expired: a new licence, without asking for the key again
    again = make_client(server, state, clock)
    again.ensure_licence()
    again.close()
    assert server.calls.count("/v1/public-key") == 1
    assert len(server.licence_requests) == 2


def test_a_server_whose_key_changed_is_caught_by_the_signature_then_asked_again(
    server, state, clock
) -> None:
    """The noted check is no guarantee: the licence's signature is. A licence that does not
    verify drops the note, so the next attempt is refused before it draws from the quota."""
    pinned = server.public_key
    make_client(server, state, clock).ensure_licence()
    server.key = Ed25519PrivateKey.generate()  # the server's key changed since it was checked
    server.public_key = server.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    clock.t += 366 * DAY
    client = make_client(server, state, clock, server_public_key=pinned)
    with pytest.raises(LicenceError, match="does not verify with any pinned server public key"):
        client.ensure_licence()
    assert json.loads((state / "server_keys.json").read_text()) == {
        "checked": {},
        "signs": {URL: protocol.b64(pinned)},  # the first answer's; the other one's is not
    }
    with pytest.raises(LicenceError, match="presents the public key"):
        client.ensure_licence()
    assert len(server.licence_requests) == 2  # the first licence, the one that did not verify
    assert server.calls.count("/v1/public-key") == 2


@pytest.mark.parametrize(
    "content", [b"{not json", b'{"checked": []}', b'{"checked": {"x": 1}}', b"[]"]
)
def test_a_malformed_server_keys_file_is_checked_again_and_rewritten(
    server, state, clock, caplog, content
) -> None:
    """The file only holds checks: starting afresh loses nothing (unlike the counters)."""
    state.mkdir(mode=0o700)
    path = state / "server_keys.json"
    path.write_bytes(content)
    os.chmod(path, 0o600)
    make_client(server, state, clock).ensure_licence()
    assert f"{path} is malformed" in caplog.text
    assert server.calls[0] == "/v1/public-key"
    pinned = protocol.b64(server.public_key)
    assert json.loads(path.read_text()) == {"checked": {URL: pinned}, "signs": {URL: pinned}}


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (404, b'{"detail": "Not Found"}'),
        (200, b"<html>captive portal</html>"),
        (200, b'{"public_key": "not base64!"}'),
        (200, b'{"public_key": "AAAA"}'),
        (200, b'{"public_key": 5}'),
    ],
    ids=["404", "html", "not-base64", "short", "not-a-string"],
)
def test_an_answer_that_is_not_a_public_key_is_refused_before_any_licence_request(
    server, state, clock, status, body
) -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/public-key":
            return httpx.Response(status, content=body)
        return server.handle(request)

    client = make_client(server, state, clock, transport=httpx.MockTransport(handle))
    with pytest.raises(LicenceError, match=rf"answered GET /v1/public-key with HTTP {status}"):
        client.ensure_licence()
    assert server.licence_requests == []


def test_a_server_key_check_that_fails_keeps_a_valid_licence(server, state, clock) -> None:
    """Inside the renewal window, an unreachable or wrong key check is a failed renewal: the
    cached licence stays in use (it verified with the pinned key)."""
    server.duration = 10 * DAY
    client = make_client(server, state, clock, overlap_seconds=5 * DAY)
    licence = client.ensure_licence()
    (state / "server_keys.json").unlink()
    server.public_key = _new_public_key()
    clock.t += 6 * DAY
    assert client.ensure_licence() == licence
    assert len(server.licence_requests) == 1
    server.up = False
    clock.t += 5 * DAY
    with pytest.raises(LicenceUnavailableError, match="unreachable"):
        client.ensure_licence()


def _resign(server: FakeServer, field: str, value: Any):
    def tamper(document: dict[str, Any]) -> dict[str, Any]:
        document["licence"][field] = value
        document["signature"] = protocol.sign(document["licence"], server.key)
        return document

    return tamper


def test_wrong_device_refused(server, state, clock) -> None:
    server.tamper = _resign(server, "device_id", uuid.uuid4().hex)
    with pytest.raises(LicenceError, match="not this device"):
        make_client(server, state, clock).ensure_licence()


def test_nonce_not_echoed_refused(server, state, clock) -> None:
    server.tamper = _resign(server, "request_nonce", protocol.new_nonce())
    with pytest.raises(LicenceError, match="nonce"):
        make_client(server, state, clock).ensure_licence()


def test_a_licence_of_a_request_not_superseded_is_refused(state, clock) -> None:
    """A request that ``supersedes`` earlier ones takes only a licence of one of them (or its
    own), even in an answer signed for it: for a day (2026-12-07) any licence was taken."""
    server = FakeServer()

    def lose_answers(request: httpx.Request) -> httpx.Response:
        response = server.handle(request)
        if request.url.path == "/v1/licences" and clock.t < T0 + 400:
            raise httpx.ReadTimeout("the answer was lost", request=request)
        return response

    client = make_client(server, state, clock, transport=httpx.MockTransport(lose_answers))
    client.resend_delays = (0.0,)
    with pytest.raises(LicenceUnavailableError):
        client.ensure_licence()
    clock.t = T0 + 400  # out of the server's window: a new request names the first
    server.tamper = _resign(server, "request_nonce", protocol.new_nonce())
    with pytest.raises(LicenceError, match="does not echo this request's nonce"):
        client.ensure_licence()
    first = server.licence_requests[0]["nonce"]
    assert [r.get("supersedes") for r in server.licence_requests[-2:]] == [None, [first]]
    client.close()


def test_other_customer_refused(server, state, clock) -> None:
    server.tamper = _resign(server, "customer_id", 8)
    with pytest.raises(LicenceError, match="customer 8"):
        make_client(server, state, clock).ensure_licence()


def test_clock_rollback(server, state, clock) -> None:
    client = make_client(server, state, clock)
    client.ensure_licence()
    clock.t = T0 + 5 * DAY
    client.consume()
    client.close()
    server.time = T0 + 5 * DAY  # the real time: the server refuses the set-back clock
    clock.t = T0 + 2 * DAY  # set back before the last time seen
    with pytest.raises(ClockRollbackError, match=r"set back.*did not confirm.*stale_request"):
        make_client(server, state, clock).ensure_licence()
    clock.t = T0 + 5 * DAY - 100  # within the tolerance
    make_client(server, state, clock).ensure_licence()
    # without the last-seen file, the licence's issue time still catches it
    (state / "clock.json").unlink()
    clock.t = T0 - DAY
    with pytest.raises(ClockRollbackError, match="issue time"):
        make_client(server, state, clock).ensure_licence()


def test_clock_rollback_in_a_running_client(server, state, clock) -> None:
    client = make_client(server, state, clock)
    client.consume()
    clock.t += 3 * DAY
    client.consume()
    server.time = clock.t
    clock.t -= DAY
    with pytest.raises(ClockRollbackError):
        client.consume()


def test_allowance_exhausted_exact_counts(state, clock) -> None:
    server = FakeServer(quota=5)
    client = make_client(server, state, clock, persist_every=100)
    for _ in range(5):
        client.consume()
    assert client.ensure_licence().inferences == 5
    with pytest.raises(QuotaExhaustedError, match="quota_exhausted"):
        client.consume()
    # the renewal reported the exact count and asked once
    assert server.used == 5 and len(server.licence_requests) == 2
    assert server.usage_requests[-1]["counter"] == 5
    with pytest.raises(QuotaExhaustedError):  # no new request before retry_seconds
        client.consume()
    assert len(server.licence_requests) == 2
    # the administrator raises the quota: the next attempt gets a licence for 3 more
    server.quota = 8
    clock.t += 301
    for _ in range(3):
        client.consume()
    assert client.ensure_licence().inferences == 3
    clock.t += 301
    with pytest.raises(QuotaExhaustedError):
        client.consume()
    assert server.used == 8
    client.close()
    assert server.used == 8


def test_counter_is_reserved_before_granting(state, clock, server) -> None:
    client = make_client(server, state, clock, persist_every=10)
    licence = client.ensure_licence()
    client.consume(3)
    usage = json.loads((state / "usage_app.json").read_text())["licences"][licence.licence_id]
    assert usage["counter"] == 10  # a crash now counts 10, never fewer than the 3 run
    for _ in range(8):
        client.consume()
    usage = json.loads((state / "usage_app.json").read_text())["licences"][licence.licence_id]
    assert usage["counter"] == 20
    client.close()  # gives back the unused 9, then reports the exact 11
    assert server.counters == {licence.licence_id: 11}
    assert mode(state / "usage_app.json") == 0o600
    with pytest.raises(LicenceError, match="closed"):
        client.consume()


def test_usage_report_idempotent(state, clock, server) -> None:
    client = make_client(server, state, clock, persist_every=1)
    licence = client.ensure_licence()
    for _ in range(4):
        client.consume()
    server.lose_usage_answers = 1  # applied, but the answer is lost
    assert client.report_usage() is False
    assert client.usage()["reported"] == 0
    assert client.report_usage() is True  # sent again with the same report id
    ids = [r["report_id"] for r in server.usage_requests]
    assert ids == [f"{licence.licence_id}:4"] * 2
    assert server.counters == {licence.licence_id: 4}
    assert client.report_usage() is True  # nothing new: nothing sent
    assert len(server.usage_requests) == 2
    server.up = False
    client.consume()
    client.close()  # report fails: not raised, kept for later
    assert server.counters == {licence.licence_id: 4}
    server.up = True
    other = make_client(server, state, clock)
    assert other.report_usage() is True
    assert server.counters == {licence.licence_id: 5}


def test_kek_unwrap(state, clock) -> None:
    kek = os.urandom(32)
    server = FakeServer(kek=kek)
    client = make_client(server, state, clock)
    assert client.kek() == kek
    # another device cannot open it
    other = make_client(server, state.parent / "other", clock)
    licence = client.ensure_licence()
    from skruntime.licensing.client import unwrap_kek

    with pytest.raises(LicenceError, match="another device key"):
        unwrap_kek(licence, other.identity.exchange_key)


def test_kek_missing(server, state, clock) -> None:
    with pytest.raises(LicenceError, match="carries no key-encryption key"):
        make_client(server, state, clock).kek()


# ---------------------------------------------------------------------- runtime integration


def test_runtime_linux_licensed(tmp_path, monkeypatch) -> None:
    torch = pytest.importorskip("torch")
    from skprotect_pytorch import Customer
    from skprotect_pytorch.protect import SkProtectorPyTorch
    from skruntime import SkRuntime
    from skruntime.errors import KeyUnavailableError

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SKPROTECT_STATE_DIR", raising=False)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)
    ).eval()
    x = torch.randn(4, 6)
    protector = SkProtectorPyTorch(application_name="app")
    protector.protect_new_model(
        model,
        "net",
        [x],
        model_export_formats=SkProtectorPyTorch.ExportFormat.ONNX,
        deployment_platform=SkProtectorPyTorch.ExportPlatform.LINUX,
        platform_version=2,
        customer=Customer(7, "ACME"),
    )
    with torch.no_grad():
        expected = model(x).numpy()
    server = FakeServer(quota=3, kek=protector.state.kek)
    outputs = tmp_path / "outputs/app"
    with pytest.raises(KeyUnavailableError):
        SkRuntime(outputs).load("net")
    state = tmp_path / "state"
    with SkRuntime(
        outputs,
        licence_server=URL,
        server_public_key=server.public_key,
        state_dir=state,
        transport=server.transport(),
    ) as rt:
        with rt.load("net") as net:
            for _ in range(3):
                y = net(x.numpy())
                np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)
            with pytest.raises(QuotaExhaustedError):
                net(x.numpy())
        request = server.licence_requests[0]
        assert request["customer_id"] == 7 and request["models"] == ["net"]
        from skruntime.config import sha256_file

        assert request["config_sha256"] == sha256_file(outputs / "skrpl")
    assert server.used == 3
    # the unwrapped key never touched the disk
    kek = protector.state.kek
    for path in state.iterdir():
        assert kek not in path.read_bytes() and protocol.b64(kek).encode() not in path.read_bytes()


def test_a_full_state_folder_is_a_licence_error_and_the_issued_licence_is_kept(
    server, state, clock, monkeypatch
) -> None:
    """The disk fills up between the request and the cache write: the licence the server
    issued is used from memory (a retry does not ask, and pay, for another); what then cannot
    be saved is a LicenceError naming the folder, never a raw OSError."""
    import skruntime.licensing.client as client_module
    import skruntime.licensing.identity as identity

    client = make_client(server, state, clock)
    real_write_private, real_write = client_module.write_private, os.write

    def cache_full(path: Path, data: bytes) -> None:
        if path.name.startswith("licence_"):
            raise identity._state_error(path, OSError(28, "No space left on device"))
        real_write_private(path, data)

    monkeypatch.setattr(client_module, "write_private", cache_full)
    with pytest.warns(RuntimeWarning, match="used from memory by this process"):
        licence = client.ensure_licence()
    assert client.ensure_licence() == licence and len(server.licence_requests) == 1

    def full(fd: int, data: Any) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(identity.os, "write", full)
    with pytest.raises(LicenceError, match=f"Cannot write .*No space left.*{state.name}"):
        client.consume()  # the count must be saved before an inference runs
    assert not list(state.glob(".*.tmp"))  # no temporary left behind
    monkeypatch.setattr(identity.os, "write", real_write)
    client.close()


def test_close_reports_usage_when_the_counter_cannot_be_saved(
    server, state, clock, monkeypatch
) -> None:
    client = make_client(server, state, clock)
    client.ensure_licence()
    for _ in range(3):
        client.consume()
    client._save_last_seen()
    sent = []
    monkeypatch.setattr(client, "flush", lambda: (_ for _ in ()).throw(LicenceError("disk full")))
    monkeypatch.setattr(client, "report_usage", lambda: sent.append(True) or True)
    with pytest.raises(LicenceError, match="disk full"):
        client.close()
    assert sent == [True]  # reported although the flush failed


# ---------------------------------------------------------------------- failed renewals


def _other_key_answer(request: httpx.Request) -> httpx.Response:
    """A well-formed licence for this request, signed by another key than the pinned one."""
    body = json.loads(request.content)
    licence = {
        "licence_id": str(uuid.uuid4()),
        "device_id": body["device_id"],
        "customer_id": body["customer_id"],
        "application": body["application"],
        "models": body["models"],
        "issued_at": body["timestamp"],
        "expires_at": body["timestamp"] + 365 * DAY,
        "inferences": None,
        "request_nonce": body["nonce"],
        "wrapped_kek": None,
    }
    return httpx.Response(
        200,
        json={
            "licence": licence,
            "signature": protocol.sign(licence, Ed25519PrivateKey.generate()),
        },
    )


def _raise_invalid_url(request: httpx.Request) -> httpx.Response:
    raise httpx.InvalidURL("Invalid port: ':1'")


# label, licence answer, the warning inside the window, the error once the licence expired
FAILED_RENEWALS = [
    (
        "captive portal 200 html",
        lambda r: httpx.Response(200, content=b"<html>login</html>"),
        "non-JSON content",
        (LicenceError, "non-JSON content"),
    ),
    (
        "404",
        lambda r: httpx.Response(404, content=b"not found"),
        "HTTP 404",
        (LicenceError, "HTTP 404"),
    ),
    (
        "403 html (a proxy, not a denial)",
        lambda r: httpx.Response(403, content=b"<html>forbidden</html>"),
        "HTTP 403",
        (LicenceError, "HTTP 403"),
    ),
    (
        "200 nested too deeply",
        lambda r: httpx.Response(200, content=b"[" * 100_000),
        "nested too deeply",
        (LicenceError, "nested too deeply"),
    ),
    (
        "200 signed by another key",
        _other_key_answer,
        "pinned server public key",
        (LicenceError, "pinned server public key"),
    ),
    (
        "transport raises InvalidURL",
        _raise_invalid_url,
        "unreachable: InvalidURL",
        (LicenceUnavailableError, "expired at .* unreachable \\(InvalidURL"),
    ),
    (
        "503",
        lambda r: httpx.Response(503),
        "answered with an error, HTTP 503",
        (LicenceUnavailableError, "expired at .* answered with an error, HTTP 503"),
    ),
]


@pytest.mark.parametrize(
    ("answer", "warning", "expired"),
    [case[1:] for case in FAILED_RENEWALS],
    ids=[case[0] for case in FAILED_RENEWALS],
)
def test_failed_renewal_inside_the_window_keeps_the_licence_and_backs_off(
    state, clock, caplog, answer, warning, expired
) -> None:
    server = FakeServer(duration=100 * DAY)
    client = make_client(server, state, clock, overlap_seconds=30 * DAY, retry_seconds=300)
    licence = client.ensure_licence()
    server.answer = answer
    clock.t = T0 + 80 * DAY  # inside the window
    with caplog.at_level("WARNING", logger="skruntime.licensing.client"):
        assert client.ensure_licence() == licence
        client.consume()
    assert server.calls.count("/v1/licences") == 2  # the first licence, one renewal attempt
    failures = [r.getMessage() for r in caplog.records if "renewal failed" in r.getMessage()]
    assert len(failures) == 1
    assert warning in failures[0] and "stays valid until" in failures[0]
    for _ in range(5):  # backed off: no new attempt before retry_seconds
        assert client.ensure_licence() == licence
    assert server.calls.count("/v1/licences") == 2
    clock.t += 301
    assert client.ensure_licence() == licence
    assert server.calls.count("/v1/licences") == 3
    clock.t = T0 + 100 * DAY  # expired: no licence to fall back on, the error is raised
    error, match = expired
    with pytest.raises(error, match=match) as raised:
        client.ensure_licence()
    assert not isinstance(raised.value, LicenceDeniedError)
    assert json.loads((state / "licence_app.json").read_text())["licence"]["licence_id"] == (
        licence.licence_id
    )


def _read_timeout(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadTimeout("timed out", request=request)


def _connect_error(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


@pytest.mark.parametrize(
    ("answer", "sent"),
    [(_read_timeout, 3), (lambda r: httpx.Response(502), 3), (_connect_error, 1)],
    ids=["read timeout", "502", "connection refused"],
)
def test_lost_answers_are_resent(state, clock, answer, sent) -> None:
    """An answer lost after the request may have reached the server is asked for again with the
    identical signed bytes (the server resends a granted licence uncharged); a request that
    never left (connection refused) is not."""
    server = FakeServer()
    bodies: list[bytes] = []

    def record(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/public-key":
            return server.handle(request)
        bodies.append(request.read() + request.headers[protocol.SIGNATURE_HEADER].encode())
        return answer(request)

    client = make_client(server, state, clock, transport=httpx.MockTransport(record))
    client.resend_delays = (0.0, 0.0)
    with pytest.raises(LicenceUnavailableError):
        client.ensure_licence()
    assert len(bodies) == sent and len(set(bodies)) == 1


def test_an_explicit_denial_is_not_a_failed_renewal(state, clock) -> None:
    server = FakeServer(duration=100 * DAY)
    client = make_client(server, state, clock, overlap_seconds=30 * DAY)
    client.ensure_licence()
    clock.t = T0 + 100 * DAY
    server.deny = ("contract_ended", "customer 7's contract ended")
    with pytest.raises(LicenceDeniedError) as err:
        client.ensure_licence()
    assert err.value.reason == "contract_ended"
    server.deny = None
    server.answer = lambda r: httpx.Response(429, content=b"slow down")  # a proxy's 429
    client._next_retry = float("-inf")
    with pytest.raises(LicenceError, match="answered HTTP 429 to a licence request, not a "):
        client.ensure_licence()


def test_a_denial_the_server_did_not_sign_is_not_taken(state, clock, caplog) -> None:
    """Someone in the network path answers the renewal with the server's ``device_revoked``,
    unsigned: the device dropped its cached licence, valid for 20 more days, at once. Now only
    a denial signed by the pinned key for this very request counts (a signed one replayed from
    another request does not either); the licence stays, with a warning."""
    server = FakeServer(duration=100 * DAY)
    client = make_client(server, state, clock, overlap_seconds=30 * DAY)
    licence = client.ensure_licence()
    clock.t = T0 + 80 * DAY
    server.deny = ("device_revoked", "device is revoked")
    server.signs = False
    assert client.ensure_licence() == licence
    assert (state / "licence_app.json").exists()
    assert "not a licence or a denial signed by a pinned server key" in caplog.text
    server.signs = True  # the server's signed denial of another request, replayed
    other = client._licence_body(clock.t, None)  # another request of this device (its own nonce)
    replayed = server.handle(
        httpx.Request(
            "POST",
            f"{URL}/v1/licences",
            content=protocol.canonical_bytes(other),
            headers={protocol.SIGNATURE_HEADER: client.identity.sign(other)},
        )
    )
    server.answer = lambda request: replayed
    client._next_retry = float("-inf")
    assert client.ensure_licence() == licence
    assert (state / "licence_app.json").exists()
    server.answer = None
    client._next_retry = float("-inf")
    with pytest.raises(LicenceDeniedError, match="device_revoked"):
        client.ensure_licence()  # the server's own denial of this request
    assert not (state / "licence_app.json").exists()


# ---------------------------------------------------------------------- clock reconciliation


def test_a_forward_clock_jump_is_reconciled_with_the_servers_signed_time(
    state, clock, caplog
) -> None:
    """The clock jumped 180 days ahead once, then NTP corrected it: the server's signed receipt
    of a usage report stamped with the corrected time resets the last time seen, and the device
    goes on with its licence (no new one drawn from the quota)."""
    server = FakeServer(duration=365 * DAY)
    server.time = T0
    first = make_client(server, state, clock)
    first.ensure_licence()
    first.close()
    clock.t = T0 + 180 * DAY  # the jump: the cached licence is still valid, no server call
    jumped = make_client(server, state, clock)
    jumped.consume()
    jumped.close()
    assert json.loads((state / "clock.json").read_text()) == {"last_seen": T0 + 180 * DAY}
    clock.t = server.time = T0 + 3600  # corrected
    with caplog.at_level("WARNING", logger="skruntime.licensing.client"):
        recovered = make_client(server, state, clock)
        licence = recovered.ensure_licence()
    assert licence.issued_at == T0 and len(server.licence_requests) == 1
    assert server.usage_requests[-1]["timestamp"] == T0 + 3600
    assert "confirms it (its signed answer to usage report" in caplog.text
    assert json.loads((state / "clock.json").read_text()) == {"last_seen": T0 + 3600}
    recovered.consume()
    recovered.close()
    later = make_client(server, state, clock)  # a new process: no rollback, no server call
    assert later.ensure_licence() == licence and len(server.licence_requests) == 1
    later.close()
    # a clock set back beyond the server's signed time is still refused, and asks the server
    # at most once per retry_seconds
    clock.t = T0 - DAY
    back = make_client(server, state, clock, retry_seconds=300)
    with pytest.raises(ClockRollbackError, match=r"did not confirm.*stale_request"):
        back.ensure_licence()
    calls = len(server.calls)
    with pytest.raises(ClockRollbackError, match="set back"):
        back.consume()
    assert len(server.calls) == calls
    assert json.loads((state / "clock.json").read_text()) == {"last_seen": T0 + 3600}


def test_a_rollback_is_refused_offline(server, state, clock) -> None:
    client = make_client(server, state, clock)
    client.consume()
    clock.t += 3 * DAY
    client.consume()
    client.close()
    server.up = False
    clock.t -= 2 * DAY
    with pytest.raises(
        ClockRollbackError,
        match=r"did not confirm.*unreachable.*; if this clock is right \(it was ahead before\), "
        r"connect the device to the licence server once to confirm it\)\.$",
    ):
        make_client(server, state, clock).ensure_licence()


# ---------------------------------------------------------------------- malformed state


def _write(path: Path, text: str) -> None:
    path.write_text(text)
    os.chmod(path, 0o600)


# label, file, content, the error when it is read (None: ignored with a warning)
MALFORMED_STATE = [
    ("licence cache nested", "licence_app.json", "[" * 200_000, None),
    ("licence cache not JSON", "licence_app.json", '{"licence": ', None),
    ("usage nested", "usage_app.json", "[" * 200_000, "usage_app.json is malformed .nested"),
    (
        "usage counter a string",
        "usage_app.json",
        '{"licences": {"L": {"counter": "5", "reported": 0}}}',
        "usage_app.json is malformed .the entry of licence 'L'",
    ),
    (
        "usage entry a list",
        "usage_app.json",
        '{"licences": {"L": [1, 2]}}',
        "usage_app.json is malformed .the entry of licence 'L'",
    ),
    (
        "usage negative counter",
        "usage_app.json",
        '{"licences": {"L": {"counter": -4}}}',
        "usage_app.json is malformed",
    ),
    ("usage a list", "usage_app.json", "[]", "usage_app.json is malformed .no licences"),
    ("clock nested", "clock.json", "[" * 200_000, "clock.json is malformed .nested"),
    (
        "clock out of range",
        "clock.json",
        '{"last_seen": 99999999999999999999}',
        "clock.json is malformed .last_seen",
    ),
    ("clock a string", "clock.json", '{"last_seen": "yesterday"}', "clock.json is malformed"),
    ("clock empty", "clock.json", "", "clock.json is malformed"),
    ("device key nested", "device.key", "[" * 200_000, "device.key is corrupted .nested"),
    (
        "device key not a string",
        "device.key",
        '{"format": "skruntime-device-key", "version": 1, "device_id": "'
        + "a" * 32
        + '", "signing_key": 5, "exchange_key": 5}',
        "device.key is corrupted",
    ),
]


@pytest.mark.parametrize(
    ("name", "content", "error"),
    [case[1:] for case in MALFORMED_STATE],
    ids=[case[0] for case in MALFORMED_STATE],
)
def test_malformed_state_files(server, state, clock, caplog, name, content, error) -> None:
    """A bad licence cache is ignored with a warning; a bad counter, clock or key file is a
    LicenceError naming it, and is left as it is (never reset silently)."""
    client = make_client(server, state, clock)
    client.consume()
    client.close()
    _write(state / name, content)
    if error is None:
        with caplog.at_level("WARNING", logger="skruntime.licensing.client"):
            licence = make_client(server, state, clock).ensure_licence()
        assert "Ignoring the cached licence" in caplog.text
        assert len(server.licence_requests) == 2 and licence.issued_at == clock.t
        return
    with pytest.raises(LicenceError, match=error) as raised:
        make_client(server, state, clock).consume()
    assert str(state / name) in str(raised.value)
    assert (state / name).read_text() == content


def test_device_json_that_is_not_json_is_rewritten(state) -> None:
    identity = DeviceIdentity.load_or_create(state)
    _write(state / "device.json", "[" * 200_000)
    assert DeviceIdentity.load_or_create(state).device_id == identity.device_id
    assert json.loads((state / "device.json").read_text()) == identity.public_info()


@pytest.mark.parametrize("url", ["http://[::1", "127.0.0.1:8765", "ftp://licence.test", ""])
def test_invalid_server_url_is_refused_when_the_client_is_made(server, state, clock, url) -> None:
    with pytest.raises(LicenceError, match=r"licence server URL .* is invalid"):
        LicenceClient(
            url,
            state_dir=state,
            server_public_key=server.public_key,
            application="app",
            customer_id=7,
            models=["net"],
            config_sha256="ab" * 32,
        )


def test_usage_entries_are_kept_while_their_licence_can_be_used(state, clock) -> None:
    """Reported entries of valid licences stay (at most 64 of replaced ones, partly used ones
    first: the server may send their licence again); expired, used-up and older runtimes'
    reported entries go; the current licence's entry always stays."""
    server = FakeServer(quota=1000)
    client = make_client(server, state, clock, persist_every=1)
    current = client.ensure_licence().licence_id
    path = state / "usage_app.json"
    licences = json.loads(path.read_text())["licences"]
    licences |= {
        "expired": {"counter": 5, "reported": 5, "expires_at": T0 - 301, "inferences": 9},
        "used-up": {"counter": 10, "reported": 10, "expires_at": T0 + DAY, "inferences": 10},
        "legacy": {"counter": 2, "reported": 2},
        "partly-used": {"counter": 1, "reported": 1, "expires_at": T0 + 1, "inferences": 10},
        "unlimited": {"counter": 1, "reported": 1, "expires_at": T0 + 2},
    }
    idle = {f"idle-{i:02d}": T0 + DAY + i for i in range(70)}
    for licence_id, expires_at in idle.items():
        licences[licence_id] = {
            "counter": 0,
            "reported": 0,
            "expires_at": expires_at,
            "inferences": 10,
        }
    _write(path, json.dumps({"licences": licences}))
    client.consume()
    client.close()
    kept = json.loads(path.read_text())["licences"]
    # "partly-used", then the latest 63 of the 71 others: "unlimited" and idle-00 to 06 go
    assert set(kept) == {current, "partly-used"} | {f"idle-{i:02d}" for i in range(7, 70)}
    assert kept[current] == {
        "counter": 1,
        "reported": 1,
        "expires_at": T0 + 365 * DAY,
        "inferences": 1000,
    }
    assert kept["idle-69"] == {
        "counter": 0,
        "reported": 0,
        "expires_at": T0 + DAY + 69,
        "inferences": 10,
    }


def test_up_to_64_reported_entries_of_replaced_licences_stay(state, clock) -> None:
    """With 33 to 63 of them, the trim sliced from the end: of 40, 16 went (24 stayed)."""
    server = FakeServer(quota=1000)
    client = make_client(server, state, clock, persist_every=1)
    current = client.ensure_licence().licence_id
    path = state / "usage_app.json"
    licences = json.loads(path.read_text())["licences"]
    idle = {
        f"idle-{i:02d}": {"counter": 0, "reported": 0, "expires_at": T0 + DAY + i}
        for i in range(40)
    }
    _write(path, json.dumps({"licences": licences | idle}))
    client.consume()
    client.close()
    assert set(json.loads(path.read_text())["licences"]) == {current} | set(idle)


@pytest.mark.parametrize("wanted", [0, 2**63, True, 1.5])
def test_a_requested_allowance_the_server_refuses_is_refused_when_the_client_is_made(
    server, state, clock, wanted
) -> None:
    """2**63 was sent with every licence request and refused with a 422, reported as an answer
    that is not a licence ("a proxy or a captive portal may be in the way")."""
    with pytest.raises(ValueError, match=r"requested_inferences must be an int from 1 to 9223"):
        make_client(server, state, clock, requested_inferences=wanted)
    assert server.calls == []


def test_a_revoked_device_whose_allowance_is_used_up_is_told_it_is_revoked(state, clock) -> None:
    """The renewal for more allowance raised QuotaExhaustedError ("ask the licence
    administrator to raise the quota") and kept the cache; a revocation is a denial."""
    server = FakeServer(quota=2)
    client = make_client(server, state, clock, requested_inferences=2, persist_every=1)
    client.consume(2)
    server.deny = ("device_revoked", "device is revoked")
    with pytest.raises(LicenceDeniedError) as err:
        client.consume()
    assert err.value.reason == "device_revoked"
    assert not (state / "licence_app.json").exists()
    client.close()


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("overlap_seconds", float("nan")),
        ("overlap_seconds", float("inf")),
        ("overlap_seconds", True),
        ("retry_seconds", -1),
        ("clock_tolerance", "5"),
        ("timeout", 0),
        ("contract_end_check_seconds", -86400),
        ("contract_end_check_seconds", float("inf")),
    ],
)
def test_bad_durations_are_refused_by_name(state, clock, option, value) -> None:
    with pytest.raises(ValueError, match=f"^{option} must be a finite number of seconds"):
        make_client(FakeServer(), state, clock, **{option: value})


@pytest.mark.parametrize("application", ["team/app", "../app", ".hidden", "", 7])
def test_an_application_name_that_names_no_state_file_is_refused(state, clock, application) -> None:
    """It names the licence and counter files: "team/app" (or "../app") failed at the first
    inference with "Cannot write ...: No such file or directory ... free space there"."""
    with pytest.raises(
        ValueError, match=r"^application must be the configuration's application name.*but got "
    ):
        make_client(FakeServer(), state, clock, application=application)
    assert not state.exists()


def test_an_empty_state_dir_is_refused_not_the_current_folder(tmp_path, clock, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    before = stat.S_IMODE(tmp_path.stat().st_mode)
    with pytest.raises(LicenceError, match="state_dir is empty"):
        make_client(FakeServer(), "", clock)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == [] and stat.S_IMODE(tmp_path.stat().st_mode) == before


@pytest.mark.parametrize("below", ["", "sub"])
def test_a_state_dir_that_is_a_file_is_named_as_one(tmp_path, clock, below) -> None:
    """The state folder (or a folder above it) is a file: "File exists" read as a folder that
    exists."""
    (tmp_path / "state").write_text("not a folder")
    target = tmp_path / "state" / below if below else tmp_path / "state"
    with pytest.raises(LicenceError, match=f"{tmp_path / 'state'} is a file, not a folder"):
        make_client(FakeServer(), target, clock)
    assert (tmp_path / "state").read_text() == "not a folder"


def test_a_renewal_in_the_same_second_is_not_taken_for_the_contract_end(state, clock) -> None:
    """An allowance used up within the second it was issued is renewed with the same expiry:
    that renewal was noted ``at_contract_end``, so the licence was never renewed in its overlap
    window and a server down at its expiry stopped the device."""
    server = FakeServer(duration=365 * DAY, quota=10**9)
    client = make_client(server, state, clock, overlap_seconds=30 * DAY, requested_inferences=5)
    client.consume(5)
    client.consume(1)  # the allowance is used up: renewed at once, expiring with the first
    assert "at_contract_end" not in json.loads((state / "licence_app.json").read_text())
    clock.t = T0 + 340 * DAY  # inside the overlap window
    assert client.ensure_licence().expires_at == T0 + 705 * DAY
    assert [r["timestamp"] - T0 for r in server.licence_requests] == [0, 0, 340 * DAY]
    client.close()


def test_a_lost_denial_is_asked_for_anew_not_reported_as_a_replay(state, clock) -> None:
    """The server answers the resend of a granted request with its licence, of a denied one
    with ``replayed_request``: that was raised as the denial, hiding the real reason (here the
    contract's end) behind "nonce ... was already used by this device"."""
    server = FakeServer()
    server.deny = ("contract_ended", "the contract of customer 7 ended")
    lost: list[httpx.Response] = []

    def lose_first_answer(request: httpx.Request) -> httpx.Response:
        response = server.handle(request)
        if not lost and request.url.path == "/v1/licences":
            lost.append(response)
            raise httpx.ReadTimeout("the answer was lost", request=request)
        return response

    client = make_client(server, state, clock, transport=httpx.MockTransport(lose_first_answer))
    client.resend_delays = (0.0,)
    with pytest.raises(LicenceDeniedError) as err:
        client.ensure_licence()
    assert (err.value.reason, err.value.detail) == server.deny
    assert server.calls.count("/v1/licences") == 3  # the request, its resend, a fresh one
    client.close()


def test_a_process_takes_the_contract_end_renewal_another_made(state, clock) -> None:
    """Two processes of a device hold the same licence ending at the contract end; once one has
    renewed it (same expiry, noted in the cache), the other renewed it again, drawing another
    allowance from the quota for nothing."""
    server = FakeServer(duration=365 * DAY, quota=10**9)
    server.contract_end = T0 + 40 * DAY
    first, second = (make_client(server, state, clock, overlap_seconds=30 * DAY) for _ in "ab")
    assert first.ensure_licence() == second.ensure_licence()
    clock.t = T0 + 10 * DAY  # the renewal window opens
    renewed = second.ensure_licence()
    clock.t += 60
    assert first.ensure_licence() == renewed
    assert [r["timestamp"] - T0 for r in server.licence_requests] == [0, 10 * DAY]
    first.close()
    second.close()


def test_a_new_device_key_is_made_durable_in_its_folder(tmp_path, monkeypatch) -> None:
    """The device key is linked into the state folder: without syncing the folder, a power
    loss could forget the link, and the device come back as a new one to provision again."""
    synced: list[Path] = []
    monkeypatch.setattr(identity_module, "fsync_dir", synced.append)
    DeviceIdentity.load_or_create(tmp_path / "state")
    assert (tmp_path / "state" / identity_module.KEY_FILENAME).is_file()
    assert tmp_path / "state" in synced
