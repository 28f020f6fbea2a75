"""Every answer of the server to a device request is signed by the server key, bound to that
request (``protocol.answer_message``), and the runtime takes no answer to a usage report as
the server's word unless it verifies with the pinned key. SQLite and PostgreSQL.

Before, usage receipts and denials were plain JSON: whoever sat between the device and the
server (often the device's owner, who gains from unreported usage) answered ``200
{"accepted": true}`` and the device marked its reports acknowledged, so they never reached the
server; or answered the server's ``unknown_device`` and the device dropped them for good (it
only checked ``GET /v1/public-key``, which the same man in the middle proxies from the server).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from fastapi.testclient import TestClient
from sqlalchemy import select
from tests.licensing.server_helpers import (
    FakeDevice,
    device_client,
    make_application,
    make_customer,
)

from sklicense.api.main import create_app
from sklicense.models import UsageReport
from skruntime.licensing.protocol import (
    LICENCES_PATH,
    SIGNATURE_HEADER,
    USAGE_PATH,
    answer_message,
    canonical_bytes,
    sign,
    unb64,
    verify,
)


def server_key(client: Any) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(
        unb64(client.get("/v1/public-key").json()["public_key"])
    )


def signed_for(response: Any, path: str, body: dict[str, Any], key: Ed25519PublicKey) -> bool:
    """Whether ``response`` carries the server's signature of its answer to ``body``."""
    message = answer_message(path, response.status_code, canonical_bytes(body), response.json())
    return verify(message, response.headers.get(SIGNATURE_HEADER, ""), key)


def post(client: Any, path: str, device: FakeDevice, body: dict[str, Any], key: Any = None) -> Any:
    return client.post(path, json=body, headers=device.headers(body, key))


def test_every_answer_to_a_device_request_is_signed_for_that_request(
    client, sessions, clock, settings
) -> None:
    make_application(sessions)
    make_customer(sessions, inference_quota=100)
    key = server_key(client)
    device = FakeDevice("dev-1")
    answers: list[tuple[str, dict[str, Any], Any]] = []

    def ask(path: str, body: dict[str, Any], signing_key: Any = None) -> Any:
        response = post(client, path, device, body, signing_key)
        answers.append((path, body, response))
        return response

    granted = ask(LICENCES_PATH, device.licence_request(42, clock.now))
    licence_id = granted.json()["licence"]["licence_id"]
    ask(LICENCES_PATH, device.licence_request(42, clock.now, application="nope"))  # 403
    ask(LICENCES_PATH, device.licence_request(42, clock.now), Ed25519PrivateKey.generate())
    ask(LICENCES_PATH, {"device_id": "dev-1", "nonce": "0" * 32})  # 422
    first = device.usage_report(licence_id, "r1", 5, clock.now)
    ask(USAGE_PATH, first)  # 200
    ask(USAGE_PATH, first)  # replayed nonce
    ask(USAGE_PATH, device.usage_report(licence_id, "r1", 5, clock.now))  # duplicate
    ask(USAGE_PATH, device.usage_report(licence_id, "r2", 4, clock.now))  # counter_behind
    ask(USAGE_PATH, device.usage_report("nope", "r3", 1, clock.now))  # unknown_licence
    stranger = FakeDevice("dev-x")
    strange = stranger.usage_report(licence_id, "r4", 1, clock.now)
    answers.append((USAGE_PATH, strange, post(client, USAGE_PATH, stranger, strange)))
    ask(USAGE_PATH, device.usage_report(licence_id, "r5", 6, clock.now), stranger.signing_key)
    assert [r.status_code for _, _, r in answers] == [
        200, 403, 403, 422, 200, 403, 200, 409, 404, 403, 403
    ]  # fmt: skip
    assert [r.json().get("reason") for _, _, r in answers][5:] == [
        "replayed_request",
        None,
        "counter_behind",
        "unknown_licence",
        "unknown_device",
        "bad_signature",
    ]
    for path, body, response in answers:
        assert signed_for(response, path, body, key), (path, body, response.json())
    # bound to its request: not an answer to another report, nor to the same one resent
    (_, acked, receipt), (_, duplicate, _) = answers[4], answers[6]
    assert not signed_for(receipt, USAGE_PATH, duplicate, key)
    assert not signed_for(receipt, USAGE_PATH, acked | {"counter": 6}, key)
    assert not signed_for(receipt, LICENCES_PATH, acked, key)
    # dev-1 sent 6 signed reports this minute: past a limit of 1, the next one is refused
    limited_app = create_app(dataclasses.replace(settings, usage_reports_per_minute=1), clock)
    with TestClient(limited_app) as limited:
        body = device.usage_report(licence_id, "r6", 7, clock.now)
        response = post(limited, USAGE_PATH, device, body)
        assert response.status_code == 429 and signed_for(response, USAGE_PATH, body, key)


class ManInTheMiddle(httpx.BaseTransport):
    """The path to the server; ``fake`` answers usage reports instead of the server."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self.fake: Any = None
        self.seen: list[httpx.Response] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == USAGE_PATH and self.fake is not None:
            return self.fake(request)
        response = self.inner.handle_request(request)
        if request.url.path == USAGE_PATH:
            response.read()
            self.seen.append(response)
        return response


def fake(status: int, answer: dict[str, Any]) -> Any:
    return lambda request: httpx.Response(status, json=answer)


def stored(sessions: Any) -> list[tuple[str, int]]:
    with sessions() as session:
        rows = session.execute(select(UsageReport.licence_id, UsageReport.counter))
        return sorted((licence_id, counter) for licence_id, counter in rows)


def test_usage_answers_a_man_in_the_middle_fakes_are_not_taken(
    client, sessions, clock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Faked receipts (unsigned, signed by another key, or the server's receipt of another
    report replayed) and faked denials keep both licences' reports pending, with one warning
    per ``report_usage``; the server then gets them, exactly."""
    make_application(sessions)
    make_customer(sessions, inference_quota=1000)
    pinned = unb64(client.get("/v1/public-key").json()["public_key"])
    path = ManInTheMiddle(client._transport)
    lc = device_client("http://testserver", path, pinned, tmp_path / "device", clock)
    first = lc.ensure_licence()
    lc.consume(3)
    path.fake = fake(200, {"accepted": True})  # from here, reports never reach the server
    clock.now = first.expires_at - 30  # the next inference renews
    lc.consume(4)
    second = lc.ensure_licence()
    assert second.licence_id != first.licence_id
    assert lc.usage(first.licence_id) == {"counter": 3, "reported": 0}

    other_key = Ed25519PrivateKey.generate()

    def signed_by_another_key(request: httpx.Request) -> httpx.Response:
        answer = {"accepted": True, "report_id": json.loads(request.content)["report_id"]}
        message = answer_message(USAGE_PATH, 200, request.content, answer)
        return httpx.Response(
            200, json=answer, headers={SIGNATURE_HEADER: sign(message, other_key)}
        )

    path.fake = None
    lc.consume(1)
    lc.flush()
    reports_before = len(path.seen)
    assert lc.report_usage() is True  # the server's own receipts
    receipts = path.seen[reports_before:]

    def replayed(request: httpx.Request) -> httpx.Response:
        return receipts[0]  # the signed receipt of another report

    lc.consume(2)
    lc.flush()
    fakes = {
        "unsigned receipt": fake(200, {"accepted": True}),
        "receipt signed by another key": signed_by_another_key,
        "the server's receipt of another report": replayed,
        "unsigned unknown_device": fake(
            403, {"decision": "deny", "reason": "unknown_device", "detail": "x"}
        ),
        "unsigned counter_behind": fake(
            409, {"decision": "deny", "reason": "counter_behind", "detail": "x"}
        ),
    }
    for name, answer in fakes.items():
        path.fake = answer
        caplog.clear()
        assert lc.report_usage() is False, name
        assert lc.usage(second.licence_id) == {"counter": 7, "reported": 5}, name
        (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert warning.startswith(
            "Usage reports of 1 licence(s) kept: http://testserver answered them without a "
            "signature of a pinned server key (first: HTTP "
        ), name
    assert stored(sessions) == sorted([(first.licence_id, 3), (second.licence_id, 5)])
    path.fake = None
    assert lc.report_usage() is True
    assert stored(sessions) == sorted(
        [(first.licence_id, 3), (second.licence_id, 5), (second.licence_id, 7)]
    )
    lc.close()
