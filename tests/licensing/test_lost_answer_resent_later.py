"""A licence request whose answer never came back (the server slower than the client's timeout,
at every one of its sends) was granted and charged; the client's next attempt signed a new
request, charged again, so the customer's granted total exceeded what the device received. The
unanswered request is now sent again, the same, while its timestamp is inside the server's
window: by the same process, or by one started afresh on the same state folder. Against the
real server app, SQLite and PostgreSQL."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from tests.licensing.server_helpers import device_client, make_application, make_customer

from sklicense.models import Customer, Licence
from skruntime.errors import LicenceUnavailableError
from skruntime.licensing.protocol import LICENCES_PATH, unb64


class SlowServer(httpx.BaseTransport):
    """The server decides every licence request, but the first ``late`` answers arrive after
    the client's timeout (read as a timeout: the answer is lost)."""

    def __init__(self, inner: httpx.BaseTransport, late: int) -> None:
        self.inner = inner
        self.late = late
        self.nonces: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.url.path == LICENCES_PATH:
            self.nonces.append(json.loads(request.content)["nonce"])
            if self.late > 0:
                self.late -= 1
                response.read()
                raise httpx.ReadTimeout("timed out", request=request)
        return response


def granted(sessions: Any) -> tuple[int, list[int]]:
    """The customer's granted total and the allowance of each licence issued."""
    with sessions() as session:
        total = session.get(Customer, 42).inferences_granted
        return total, list(session.scalars(select(Licence.inferences)))


def start(client: Any, sessions: Any, clock: Any, folder: Path, late: int) -> Any:
    make_application(sessions)
    make_customer(sessions, inference_quota=1000)
    pinned = unb64(client.get("/v1/public-key").json()["public_key"])
    slow = SlowServer(client._transport, late)
    device = device_client("http://testserver", slow, pinned, folder, clock)
    device.resend_delays = (0.0, 0.0)
    return device, slow, pinned


@pytest.mark.parametrize("restarted", [False, True], ids=["same process", "restarted"])
def test_a_request_whose_answers_were_lost_is_sent_again_not_charged_again(
    client, sessions, clock, tmp_path: Path, restarted: bool
) -> None:
    device, slow, pinned = start(client, sessions, clock, tmp_path / "device", late=3)
    with pytest.raises(LicenceUnavailableError):
        device.ensure_licence()  # three sends, every answer lost
    pending = tmp_path / "device" / "pending_demo-app.json"
    mode = stat.S_IMODE(pending.stat().st_mode) if pending.exists() else None
    clock.now += 200  # inside the server's ±300 s window
    if restarted:
        device.close()
        device = device_client("http://testserver", slow, pinned, tmp_path / "device", clock)
    licence = device.ensure_licence()
    device.close()
    assert granted(sessions) == (10, [10]) and licence.inferences == 10
    assert len(set(slow.nonces)) == 1 and len(slow.nonces) == 4  # one request, sent 4 times
    assert mode == 0o600 and not pending.exists()  # kept owner-only until answered


def test_a_request_out_of_the_window_is_not_sent_again(client, sessions, clock, tmp_path) -> None:
    """Stale, it would be refused (``stale_request``): a new one is signed, which supersedes
    it, and is answered with its licence (test_resend_superseded.py), not charged again."""
    device, slow, _ = start(client, sessions, clock, tmp_path / "device", late=3)
    with pytest.raises(LicenceUnavailableError):
        device.ensure_licence()
    clock.now += 301
    licence = device.ensure_licence()
    device.close()
    assert len(set(slow.nonces)) == 2 and licence.request_nonce == slow.nonces[0]
    assert granted(sessions) == (10, [10])


def test_a_resend_the_server_finds_stale_is_followed_by_a_new_request(
    client, sessions, clock, tmp_path
) -> None:
    """The device's clock is 200 s behind the server's: 150 s later by its own clock the
    request is still inside the window for the device, not for the server. The new request
    supersedes it, and is answered with its licence."""
    device, slow, _ = start(client, sessions, clock, tmp_path / "device", late=3)
    device._clock = lambda: clock.now - 200
    with pytest.raises(LicenceUnavailableError):
        device.ensure_licence()
    clock.now += 150
    assert device.ensure_licence().inferences == 10
    device.close()
    assert len(slow.nonces) == 5 and len(set(slow.nonces)) == 2  # 3 + the resend + a new one
    assert granted(sessions) == (10, [10])


@pytest.mark.parametrize("overlap", [600, 60], ids=["still valid", "expired meanwhile"])
def test_a_renewal_whose_answers_were_lost_is_retried_inside_the_window(
    client, sessions, clock, tmp_path, overlap: int
) -> None:
    """Inside the overlap window the client waited ``retry_seconds`` (300 s) after a failed
    renewal: by then the lost request was out of the window, and a new one was charged. It
    tries again 150 s after the request now, sending it again, also when the licence it renews
    has expired since."""
    device, slow, _ = start(client, sessions, clock, tmp_path / "device", late=0)
    device.overlap_seconds = overlap
    first = device.ensure_licence()
    clock.now = first.expires_at - overlap + 10  # in the overlap window
    slow.late = 3
    assert device.ensure_licence() == first  # the renewal's answers lost: kept
    if clock.now + 149 < first.expires_at:
        clock.now += 149
        assert device.ensure_licence() == first  # not yet: no retry before 150 s
        assert len(slow.nonces) == 4
    clock.now = first.expires_at - overlap + 10 + 150
    renewed = device.ensure_licence()  # the same request, sent again inside the window
    device.close()
    assert renewed != first and renewed.inferences == 10
    assert len(set(slow.nonces)) == 2
    assert granted(sessions) == (20, [10, 10])


def test_an_unusable_pending_file_is_replaced(client, sessions, clock, tmp_path, caplog) -> None:
    folder = tmp_path / "device"
    device, _, _ = start(client, sessions, clock, folder, late=0)
    pending = folder / "pending_demo-app.json"
    pending.write_bytes(b"{not json")
    pending.chmod(0o600)
    assert device.ensure_licence().inferences == 10
    assert "Ignoring" in caplog.text and not pending.exists()
    device.close()
    assert granted(sessions) == (10, [10])
