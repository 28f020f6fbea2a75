"""Contract-end checks: a contract ended early, and servers that do not
know ``renews``.

- A contract the administrator ended early (its end set to now) got a signed
  ``contract_ended`` at the device's next daily check, which the runtime took like any other
  denial: it ran on its licence until the old contract end, 29 days later, while a contract
  shortened to end tomorrow stopped it tomorrow (a new licence ending with it).
  A customer whose quota was fully granted ran on to the old end after any shortening (the
  shorter licence was denied ``quota_exhausted``).
- A server that signs its answers but does not know ``renews`` (a signed ``422``): the runtime
  sent the check again without it, a plain renewal, so every daily check of a licence at the
  contract end drew a new allowance from the quota (31 allowances over 30 days instead of 1).
  A server older still signs no answer: its unsigned ``422`` failed every renewal inside the
  window, so a licence was renewed only once expired, and not at all if the server could not
  be reached then.

Against the real server app, SQLite and PostgreSQL."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import pytest
from fastapi.responses import JSONResponse
from tests.licensing.server_helpers import APP, make_application, make_customer
from tests.licensing.test_contract_end_checks import (
    ALLOWANCE,
    DAY,
    at,
    audited,
    contract,
    extend,
    granted,
    runtime,
)

from sklicense.api.routes.licences import signed
from skruntime.errors import LicenceDeniedError
from skruntime.licensing.protocol import LICENCES_PATH, SIGNATURE_HEADER


def test_a_contract_ended_early_stops_the_device_at_its_next_check(
    client, sessions, clock, tmp_path
) -> None:
    start = clock.now
    contract(sessions, clock, 40)
    device = runtime(client, clock, tmp_path / "device")
    device.consume()
    clock.now = start + 10 * DAY
    device.consume()  # checked: keep
    extend(sessions, clock, 0)  # the administrator ends the contract now
    clock.now = start + 11 * DAY  # before: ran on until the old contract end (day 40)
    with pytest.raises(LicenceDeniedError) as err:
        device.consume()
    assert err.value.reason == "contract_ended"
    assert not (tmp_path / "device" / f"licence_{APP}.json").exists()
    with pytest.raises(LicenceDeniedError, match="contract_ended"):
        device.consume()  # no licence left to fall back on
    assert granted(sessions) == (ALLOWANCE, 1)
    device.close()


def test_a_contract_shortened_when_the_quota_is_granted_stops_the_device_at_its_new_end(
    client, sessions, clock, tmp_path
) -> None:
    """The shorter licence cannot be issued (``quota_exhausted``, a denial that keeps the
    licence): the device ran on to the old contract end, 20 days past the new one; now the
    first check after the new end gets ``contract_ended``."""
    start = clock.now
    make_application(sessions)
    make_customer(
        sessions,
        contract_end=at(start + 40 * DAY),
        inference_quota=ALLOWANCE,
        default_licence_seconds=365 * DAY,
    )
    device = runtime(client, clock, tmp_path / "device")
    device.consume()
    clock.now = start + 10 * DAY
    device.consume()
    extend(sessions, clock, 10)  # ends on day 20 now
    for day in range(11, 20):
        clock.now = start + day * DAY
        device.consume()  # quota_exhausted: the licence stays, to the new end
    clock.now = start + 20 * DAY
    with pytest.raises(LicenceDeniedError, match="contract_ended"):
        device.consume()
    assert granted(sessions) == (ALLOWANCE, 1)
    device.close()


class RenewsUnknown(httpx.BaseTransport):
    """A server older than ``renews``: it refuses a licence request that carries it (an extra
    field) with a 422; ``signs``: the release before (every answer signed), else an older one
    (no answer signed)."""

    def __init__(self, client: Any, *, signs: bool) -> None:
        self.inner = client._transport
        self.key = client.app.state.signing_key
        self.signs = signs
        self.refused = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.answer(request)
        if not self.signs:
            response.headers.pop(SIGNATURE_HEADER, None)
        return response

    def answer(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.method == "POST" else None
        if request.url.path != LICENCES_PATH or not isinstance(body, dict) or "renews" not in body:
            return self.inner.handle_request(request)
        self.refused += 1
        error = {
            "type": "extra_forbidden",
            "loc": ["renews"],
            "msg": "Extra inputs are not permitted",
        }
        answer = signed(
            LICENCES_PATH,
            body,
            JSONResponse(status_code=422, content={"detail": [error]}),
            self.key,
        )
        return httpx.Response(422, headers=dict(answer.headers), content=answer.body)


OLDER = pytest.mark.parametrize("signs", [True, False], ids=["signed", "unsigned"])


@OLDER
def test_daily_checks_against_a_server_without_renews_draw_nothing(
    client, sessions, clock, tmp_path, caplog, signs
) -> None:
    """The first renewal in the window is a plain one, charged, as before ``renews`` existed;
    the daily checks after it keep the licence without asking for a new one (before: a plain
    renewal at each, 31 allowances; against an unsigned server, no renewal at all)."""
    start = clock.now
    contract(sessions, clock, 40)
    network = RenewsUnknown(client, signs=signs)
    device = runtime(client, clock, tmp_path / "device", network)
    device.consume()
    caplog.set_level(logging.WARNING)
    for day in range(10, 40):
        clock.now = start + day * DAY
        device.consume()
    assert network.refused == 30  # one check a day
    assert granted(sessions) == (2 * ALLOWANCE, 2)  # before: (31 * ALLOWANCE, 31)
    assert audited(sessions, "licence.keep") == 0
    assert "does not know the renews field" in caplog.text
    cached = json.loads((tmp_path / "device" / f"licence_{APP}.json").read_text())
    assert cached["at_contract_end"] is True
    assert cached["checked_at"] == start + 39 * DAY
    device.close()


@OLDER
def test_a_renewal_against_a_server_without_renews_still_extends_the_licence(
    client, sessions, clock, tmp_path, signs
) -> None:
    """A licence that is not at the contract end is renewed as before ``renews`` existed;
    against a server that signs no answer, its unsigned 422 failed every renewal inside the
    window, so the device stopped if the server was unreachable at the expiry."""
    start = clock.now
    contract(sessions, clock, 800)
    device = runtime(client, clock, tmp_path / "device", RenewsUnknown(client, signs=signs))
    device.consume()
    clock.now = start + 340 * DAY
    device.consume()
    assert device.ensure_licence().expires_at == start + 705 * DAY
    assert granted(sessions) == (2 * ALLOWANCE, 2)
    device.close()
