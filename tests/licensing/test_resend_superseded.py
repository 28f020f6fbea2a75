"""A licence request whose every send failed for longer than the server's ±300 s window was
granted and charged, but its resends were then ``stale_request``: the client signed a new
request, charged again, and the first licence's inferences were lost to the customer. The new
request now names the unanswered ones it ``supersedes``; the server answers it with the licence
it granted one of them (same id, allowance and expiry), uncharged, while that licence is valid.
Against the real server app, SQLite and PostgreSQL."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.responses import JSONResponse
from sqlalchemy import select
from tests.licensing.server_helpers import (
    T0,
    FakeDevice,
    device_client,
    make_application,
    make_customer,
)
from tests.licensing.test_lost_answer_resent_later import granted, start

from sklicense.api.routes.licences import signed
from sklicense.models import AuditLog
from skruntime.errors import LicenceUnavailableError
from skruntime.licensing.protocol import LICENCES_PATH, unb64


def post(client: Any, device: FakeDevice, body: dict[str, Any]) -> Any:
    return client.post(LICENCES_PATH, json=body, headers=device.headers(body))


@pytest.mark.parametrize("restarted", [False, True], ids=["same process", "restarted"])
def test_a_request_unanswered_past_the_window_is_not_charged_again(
    client, sessions, clock, tmp_path: Path, restarted: bool
) -> None:
    """Every send fails for 1,000 s (four attempts 250 s apart, three sends each): the server
    granted the first request; the requests signed after it name it, and the last one, answered,
    gets its licence. Before: 3 licences granted (30 inferences), 1 received (10)."""
    folder = tmp_path / "device"
    device, slow, pinned = start(client, sessions, clock, folder, late=1000)
    for _ in range(4):
        with pytest.raises(LicenceUnavailableError):
            device.ensure_licence()
        clock.now += 250
        if restarted:  # the chain of unanswered requests is in the pending file
            device.close()
            device = start_again(slow, pinned, folder, clock)
    slow.late = 0
    licence = device.ensure_licence()
    device.close()
    assert len(set(slow.nonces)) == 3  # the first request, resent at 250 s; two new ones
    assert licence.request_nonce == slow.nonces[0] and licence.inferences == 10
    assert granted(sessions) == (10, [10])
    assert not (folder / "pending_demo-app.json").exists()


def pinned_key(client: Any) -> bytes:
    return unb64(client.get("/v1/public-key").json()["public_key"])


def start_again(slow: Any, pinned: bytes, folder: Path, clock: Any) -> Any:
    device = device_client("http://testserver", slow, pinned, folder, clock)
    device.resend_delays = (0.0, 0.0)
    return device


def first_grant(client: Any, sessions: Any, clock: Any, **customer: Any) -> tuple:
    """A device whose first licence request was granted, its answer lost."""
    make_application(sessions)
    make_customer(sessions, **customer)
    device = FakeDevice()
    first = device.licence_request(42, clock.now, requested_inferences=10)
    licence = post(client, device, first).json()["licence"]
    return device, first, licence


def test_the_server_answers_a_superseding_request_with_the_granted_licence(
    client, sessions, clock
) -> None:
    """Same licence id, allowance and expiry, uncharged, audited as ``licence.resend`` naming
    the request it was granted to; the superseding request sent again gets it again."""
    device, first, licence = first_grant(client, sessions, clock)
    clock.now += 400  # the first request is stale now
    later = device.licence_request(
        42, clock.now, requested_inferences=10, supersedes=[first["nonce"]]
    )
    answer = post(client, device, later)
    assert answer.status_code == 200
    resent = answer.json()["licence"]
    assert {k: v for k, v in resent.items() if k != "wrapped_kek"} == {
        k: v for k, v in licence.items() if k != "wrapped_kek"
    }
    assert post(client, device, later).json()["licence"]["licence_id"] == licence["licence_id"]
    assert granted(sessions) == (10, [10])
    with sessions() as session:
        rows = session.scalars(select(AuditLog).where(AuditLog.action == "licence.resend"))
        details = [row.detail for row in rows]
    assert details[0] == {
        "licence_id": licence["licence_id"],
        "application": "demo-app",
        "granted_to": first["nonce"],
    }


def test_a_superseded_licence_that_expired_is_not_resent(client, sessions, clock) -> None:
    device, first, licence = first_grant(client, sessions, clock, default_licence_seconds=300)
    clock.now += 400
    later = device.licence_request(
        42, clock.now, requested_inferences=10, supersedes=[first["nonce"]]
    )
    renewed = post(client, device, later).json()["licence"]
    assert renewed["licence_id"] != licence["licence_id"]
    assert renewed["request_nonce"] == later["nonce"]
    assert granted(sessions) == (20, [10, 10])


def test_a_device_naming_another_devices_request_is_charged(client, sessions, clock) -> None:
    """Only a licence granted to the requesting device is answered: naming another's request
    gets a licence of its own, charged, as without ``supersedes``."""
    _, first, licence = first_grant(client, sessions, clock)
    other = FakeDevice()
    body = other.licence_request(
        42, clock.now, requested_inferences=10, supersedes=[first["nonce"]]
    )
    own = post(client, other, body).json()["licence"]
    assert own["licence_id"] != licence["licence_id"] and own["device_id"] == other.id
    assert granted(sessions) == (20, [10, 10])


class OlderServer(httpx.BaseTransport):
    """A server older than ``supersedes``: it refuses the field (a 422 it signs)."""

    def __init__(self, inner: httpx.BaseTransport, key: Any, lost: int) -> None:
        self.inner, self.key, self.lost = inner, key, lost

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.url.path == LICENCES_PATH else {}
        if "supersedes" in body:
            detail = [{"type": "extra_forbidden", "loc": ["supersedes"], "msg": "Extra inputs"}]
            answer = signed(LICENCES_PATH, body, JSONResponse({"detail": detail}, 422), self.key)
            return httpx.Response(422, headers=dict(answer.headers), content=answer.body)
        response = self.inner.handle_request(request)
        if body and self.lost > 0:
            self.lost -= 1
            response.read()
            raise httpx.ReadTimeout("timed out", request=request)
        return response


def test_a_server_older_than_supersedes_gets_the_request_without_it(
    client, sessions, clock, tmp_path, caplog
) -> None:
    """It is charged again, as before; the client warns and asks without the field."""
    make_application(sessions)
    make_customer(sessions)
    pinned = pinned_key(client)
    older = OlderServer(client._transport, client.app.state.signing_key, lost=3)
    device = device_client("http://testserver", older, pinned, tmp_path / "device", clock)
    device.resend_delays = (0.0, 0.0)
    with pytest.raises(LicenceUnavailableError):
        device.ensure_licence()
    clock.now += 301
    with caplog.at_level(logging.WARNING):
        assert device.ensure_licence().inferences == 10
    device.close()
    assert "does not know the supersedes field" in caplog.text
    assert granted(sessions) == (20, [10, 10])


def test_a_pending_file_left_after_its_answer_is_not_superseded(
    client, sessions, clock, tmp_path, monkeypatch
) -> None:
    """The state folder would not let the answered request's file be removed: once its licence
    is in use, the next request neither sends it again nor names it, and gets a new licence.
    Before: inside the window the file's request was sent again, and answered with that
    licence, used up, at every renewal (``QuotaExhaustedError``)."""
    import skruntime.licensing.client as client_module

    folder = tmp_path / "device"
    device, slow, _ = start(client, sessions, clock, folder, late=0)
    real_unlink = client_module.os.unlink

    def unlink(path: object, *args: object, **kw: object) -> None:
        if Path(str(path)).name.startswith("pending_"):
            raise OSError(30, "Read-only file system", str(path))
        real_unlink(path, *args, **kw)

    monkeypatch.setattr(client_module.os, "unlink", unlink)
    licences = [device.ensure_licence().licence_id]
    for later in (100, 500):  # the file's request inside the window, then out of it
        clock.now = T0 + later
        while device._licence.licence_id == licences[-1] and len(slow.nonces) < 5:
            device.consume()  # the allowance used up: renewed
        licences.append(device._licence.licence_id)
    device.close()
    assert granted(sessions) == (30, [10, 10, 10])
    assert (
        len(set(licences)) == 3
        and len(set(slow.nonces)) == 3
        and "supersedes" not in json.loads((folder / "pending_demo-app.json").read_text())
    )


def test_a_pending_file_naming_malformed_nonces_is_replaced(
    client, sessions, clock, tmp_path
) -> None:
    """Edited or corrupt, its ``supersedes`` would be refused (a 422) at every request: it is
    neither sent again nor named, and a new request replaces it."""
    folder = tmp_path / "device"
    device, slow, _ = start(client, sessions, clock, folder, late=3)
    with pytest.raises(LicenceUnavailableError):
        device.ensure_licence()
    device.close()
    pending = folder / "pending_demo-app.json"
    held = json.loads(pending.read_text()) | {"supersedes": ["not a nonce"]}
    pending.write_text(json.dumps(held))
    device = start_again(slow, pinned_key(client), folder, clock)
    licence = device.ensure_licence()
    device.close()
    assert licence.request_nonce == slow.nonces[-1] != held["nonce"]
    assert len(set(slow.nonces)) == 2 and not pending.exists()


@pytest.mark.parametrize("later", [200, 400], ids=["sent again", "superseded"])
def test_a_lost_grant_another_process_used_up_is_not_sent_again(
    client, sessions, clock, tmp_path, later: int
) -> None:
    """A process's request was granted, its answer lost; another process of the device sent it
    again and got the licence, used it up, renewed, and reported it (its counter dropped). The
    first process's next request, sent again or superseding it, is charged a new licence, not
    answered with that one to count from 0 again. Before: that licence counted 20 inferences on
    its allowance of 10 (31 counted on 30 granted)."""
    folder = tmp_path / "device"
    first, slow, pinned = start(client, sessions, clock, folder, late=3)
    with pytest.raises(LicenceUnavailableError):
        first.ensure_licence()
    clock.now += 100
    other = start_again(slow, pinned, folder, clock)
    lost = other.ensure_licence()  # the pending file's request, sent again
    for _ in range(11):  # its allowance of 10 used up, then renewed
        other.consume(1)
    other.flush()
    clock.now += later - 100
    used = set()
    for _ in range(20):
        first.consume(1)
        used.add(first._licence.licence_id)
    first.flush()
    assert lost.licence_id not in used
    assert granted(sessions) == (40, [10, 10, 10, 10])  # 31 counted: 10 + 1, 9 + 10 + 1
    other.close()
    first.close()


class Refused(httpx.BaseTransport):
    """The first ``refused`` sends of a licence request find the server unreachable (a refused
    connection: they never reach it)."""

    def __init__(self, inner: httpx.BaseTransport, refused: int) -> None:
        self.inner, self.refused = inner, refused

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == LICENCES_PATH and self.refused > 0:
            self.refused -= 1
            raise httpx.ConnectError("connection refused", request=request)
        return self.inner.handle_request(request)


def test_a_grant_after_requests_that_never_reached_the_server_stays_named(
    client, sessions, clock, tmp_path
) -> None:
    """Unreachable for 450 s (the first request never reached the server), then every answer
    lost for about 75 minutes: the first request that reached it was granted, and every request
    after it names it, however long the chain. Before: the chain kept its first request (never
    sent) and the latest 7, so the granted one was dropped from it after 8 more: 20 inferences
    charged, 10 received."""
    folder = tmp_path / "device"
    device, slow, pinned = start(client, sessions, clock, folder, late=72)
    device.close()
    device = start_again(Refused(slow, refused=9), pinned, folder, clock)  # 3 attempts' sends
    for _ in range(100):
        try:
            licence = device.ensure_licence()
            break
        except LicenceUnavailableError:
            clock.now += 150
    device.close()
    assert len(set(slow.nonces)) > 8  # more requests than the chain names
    assert licence.request_nonce == slow.nonces[0]  # the first that reached the server
    assert granted(sessions) == (10, [10])
