"""Per-device rate limits of the signed device requests (licence requests, usage reports)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from fastapi.responses import JSONResponse
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from sklicense import crud
from sklicense.decision import stale_request
from skruntime.licensing.protocol import TIMESTAMP_WINDOW_S

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceLimit:
    """One kind of device request that a device may send ``limit`` times a minute.

    ``key``: its rate counter's prefix; ``what``: how a refusal names the requests;
    ``action``: the audit action of a refusal."""

    key: str
    what: str
    action: str
    limit: int


def rate_limited(detail: str, now: int) -> JSONResponse:
    """A 429 refusal, with the seconds until the next minute's count as ``Retry-After``."""
    return JSONResponse(
        status_code=429,
        content={"decision": "deny", "reason": "rate_limited", "detail": detail},
        headers={"Retry-After": str(60 - now % 60)},
    )


def device_rate_limited(
    engine: Engine,
    sessions: sessionmaker[Session],
    kind: DeviceLimit,
    device_id: str,
    timestamp: int,
    target: str,
    now: int,
    instead: Callable[[], JSONResponse | None] | None = None,
) -> JSONResponse | None:
    """The 429 of a device past ``kind.limit`` signed requests of ``kind`` this minute, or
    None; call it only for requests its device signed, so that nobody can spend another
    device's budget. Requests with a timestamp outside the window count apart: whoever once
    captured a request of the device could replay it, stale but signed, as often as they like,
    and keep the device itself from being answered. ``instead``: the answer a request past the
    limit gets in place of the 429 when it returns one (a resend answered with its licence),
    not a refusal. The first refusal of a minute is audited (``kind.action`` on ``target``),
    the others logged at WARNING: a device that keeps asking (a retry loop, a revoked device, a
    replayed request) would otherwise add an audit row per request."""
    stale = stale_request(timestamp, now) is not None
    key = f"{'stale-' if stale else ''}{kind.key}:{device_id}"
    count = crud.rate_hit(engine, key, now)
    if count <= kind.limit:
        return None
    if instead is not None:
        answer = instead()
        if answer is not None:
            return answer
        # refusals counted apart: an answer `instead` may have had the first place past the limit
        count = kind.limit + crud.rate_hit(engine, f"refused-{key}", now)
    detail = f"device {device_id} sent more than {kind.limit} {kind.what} " + (
        f"with a timestamp more than {TIMESTAMP_WINDOW_S} s from the server time this minute; "
        "check the device clock"
        if stale
        else "this minute; retry later"
    )
    if count > kind.limit + 1:
        logger.warning("%s (audited once a minute)", detail)
        return rate_limited(detail, now)
    with sessions.begin() as session:
        crud.audit(
            session,
            f"device:{device_id}",
            kind.action,
            target,
            {"reason": "rate_limited", "detail": detail},
        )
    return rate_limited(detail, now)
