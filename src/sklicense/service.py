"""Applying decisions: one transaction per device request (decide, then write, then commit)."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from sklicense.crud import audit
from sklicense.crypto import sign_licence, wrap_kek
from sklicense.decision import (
    Allow,
    Deny,
    bad_signature,
    check_message,
    decide,
    signed_with,
)
from sklicense.models import Application, Device, Licence, SeenNonce, UsageReport
from sklicense.schemas import LicenceRequestIn, UsageReportIn
from skruntime.licensing.protocol import TIMESTAMP_WINDOW_S

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    status: int
    body: dict[str, Any]


def _ts(seconds: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


def remember_nonce(session: Session, device_id: str, nonce: str, now: int) -> None:
    """Record a nonce and forget the device's nonces older than twice the timestamp window
    (a request that old is refused as stale before its nonce is looked at)."""
    session.execute(
        delete(SeenNonce).where(
            SeenNonce.device_id == device_id,
            SeenNonce.seen_at < _ts(now - 2 * TIMESTAMP_WINDOW_S),
        )
    )
    session.add(SeenNonce(device_id=device_id, nonce=nonce, seen_at=_ts(now)))


def _deny(deny: Deny) -> Outcome:
    return Outcome(403, {"decision": "deny", "reason": deny.reason, "detail": deny.detail})


def _with_replay_retry(sessions: sessionmaker[Session], attempt: Any) -> Outcome:
    """Run ``attempt(session)``; a concurrent duplicate nonce/report (IntegrityError) is retried
    once, when the decision then sees the committed row."""
    for tries in (1, 2):
        with sessions() as session:
            try:
                with session.begin():
                    return attempt(session)
            except IntegrityError:
                if tries == 2:
                    raise
    raise AssertionError("unreachable")


def signed_by_device(
    sessions: sessionmaker[Session],
    request: LicenceRequestIn,
    body: dict[str, Any],
    signature: str | None,
) -> tuple[bytes | None, bool]:
    """The raw key the request is signed with when that is the key of the device it names (its
    registered key; a new device's own key), else None; and whether that device is registered.
    Only signed requests count against the device's rate limit, so nobody can exhaust another
    device's limit by sending unsigned requests in its name; a new device's count against its
    sender's address, since anyone can make a new identity for each request. The key is passed
    on to :func:`request_licence`, which verifies the signature again only if the device's key
    changed in between."""
    with sessions() as session:
        device = session.get(Device, request.device_id)
        key = device.signing_public_key if device else request.signing_public_key
    return signed_with(body, signature, key), device is not None


def refuse_unsigned(request: LicenceRequestIn, *, registered: bool) -> Outcome:
    """The answer to a licence request its device did not sign, given before any transaction:
    anyone can send these, as fast as they like, so they neither lock the customer's row nor
    add to the audit log."""
    deny = bad_signature(registered=registered)
    logger.warning(
        "licence request naming device %r denied: %s (not audited)", request.device_id, deny.detail
    )
    return _deny(deny)


def request_licence(
    sessions: sessionmaker[Session],
    request: LicenceRequestIn,
    body: dict[str, Any],
    signature: str | None,
    now: int,
    key: Ed25519PrivateKey,
    verified: bytes | None = None,
) -> Outcome:
    """Decide and apply a licence request in one transaction. ``verified``: the device key that
    :func:`signed_by_device` verified the signature with (not verified again unless the
    device's key is another one by now)."""

    def attempt(session: Session) -> Outcome:
        decision = decide(session, request, body, signature, now, verified)
        actor = f"device:{request.device_id}"
        target = f"customer:{request.customer_id}"
        if isinstance(decision, Deny) and decision.reason == "bad_signature":
            # the device was registered with another key since it was looked up
            return refuse_unsigned(request, registered=True)
        if isinstance(decision, Deny) and decision.reason == "replayed_request":
            resent = _resend(session, request, now, key)
            if resent is not None:
                return resent
        if isinstance(decision, Deny):
            if decision.record_nonce:
                remember_nonce(session, request.device_id, request.nonce, now)
            audit(
                session,
                actor,
                "licence.deny",
                target,
                {
                    "reason": decision.reason,
                    "detail": decision.detail,
                    "application": request.application,
                },
            )
            return _deny(decision)
        return _allow(session, decision, request, now, key)

    return _with_replay_retry(sessions, attempt)


def _allow(
    session: Session, allow: Allow, request: LicenceRequestIn, now: int, key: Ed25519PrivateKey
) -> Outcome:
    remember_nonce(session, request.device_id, request.nonce, now)
    device = allow.device
    if device is None:
        device = Device(
            id=request.device_id,
            customer_id=allow.customer.id,
            signing_public_key=request.signing_public_key,
            exchange_public_key=request.exchange_public_key,
            status="active",
            created_at=_ts(now),
        )
        session.add(device)
        audit(
            session,
            f"device:{device.id}",
            "device.register",
            f"device:{device.id}",
            {"customer_id": allow.customer.id},
        )
    if allow.inferences is not None:
        allow.customer.inferences_granted += allow.inferences
    licence_id = str(uuid.uuid4())
    row = Licence(
        id=licence_id,
        device_id=device.id,
        customer_id=allow.customer.id,
        application_id=allow.application.id,
        models=list(request.models),
        issued_at=_ts(allow.issued_at),
        expires_at=_ts(allow.expires_at),
        inferences=allow.inferences,
        request_nonce=request.nonce,
    )
    session.add(row)
    audit(
        session,
        f"device:{device.id}",
        "licence.allow",
        f"customer:{allow.customer.id}",
        {
            "licence_id": licence_id,
            "application": allow.application.name,
            "expires_at": allow.expires_at,
            "inferences": allow.inferences,
            "config_sha256": request.config_sha256,
        },
    )
    session.flush()
    return _answer(row, device, allow.application, key)


def _answer(
    row: Licence, device: Device, application: Application, key: Ed25519PrivateKey
) -> Outcome:
    """The signed licence document for a stored licence (its KEK wrapped to the device)."""
    wrapped = None
    if application.kek is not None:
        wrapped = wrap_kek(
            application.kek, device.exchange_public_key, row.id, device.id, application.name
        )
    licence = {
        "licence_id": row.id,
        "device_id": device.id,
        "customer_id": row.customer_id,
        "application": application.name,
        "models": list(row.models),
        "issued_at": int(row.issued_at.timestamp()),
        "expires_at": int(row.expires_at.timestamp()),
        "inferences": row.inferences,
        "request_nonce": row.request_nonce,
        "wrapped_kek": wrapped,
    }
    return Outcome(200, sign_licence(licence, key))


def _resend(
    session: Session, request: LicenceRequestIn, now: int, key: Ed25519PrivateKey
) -> Outcome | None:
    """The licence already granted to this very request, when a device sends it again (its
    answer was lost: a timeout, a proxy's 502): sent again, not charged again. None when the
    nonce's request was denied, or reused for another request, or the device or licence is no
    longer good: then it stays ``replayed_request``. A captured request replayed by someone
    else within the ±300 s window gets only what its device already got: a KEK wrapped to that
    device's key."""
    row = session.scalar(
        select(Licence).where(
            Licence.device_id == request.device_id, Licence.request_nonce == request.nonce
        )
    )
    if row is None:
        return None
    device = session.get(Device, row.device_id)
    application = session.get(Application, row.application_id)
    if (
        device is None
        or application is None
        or device.status != "active"
        or row.customer_id != request.customer_id
        or application.name != request.application
        or list(row.models) != list(request.models)
        or row.expires_at.timestamp() <= now
    ):
        return None
    audit(
        session,
        f"device:{device.id}",
        "licence.resend",
        f"customer:{row.customer_id}",
        {"licence_id": row.id, "application": application.name},
    )
    return _answer(row, device, application, key)


def report_usage(
    sessions: sessionmaker[Session],
    report: UsageReportIn,
    body: dict[str, Any],
    signature: str | None,
    now: int,
) -> Outcome:
    def attempt(session: Session) -> Outcome:
        device = session.get(Device, report.device_id)
        if device is None:
            return _deny(
                Deny("bad_signature", f"device {report.device_id} is not registered", False)
            )
        denied = check_message(
            session,
            device,
            device.signing_public_key,
            body,
            signature,
            report.timestamp,
            report.nonce,
            now,
        )
        if denied is not None:
            return _deny(denied)
        remember_nonce(session, device.id, report.nonce, now)
        receipt = {
            "accepted": True,
            "duplicate": False,
            "report_id": report.report_id,
            "licence_id": report.licence_id,
            "counter": report.counter,
        }
        existing = session.scalar(
            select(UsageReport).where(
                UsageReport.device_id == device.id, UsageReport.report_id == report.report_id
            )
        )
        if existing is not None:
            return Outcome(
                200,
                receipt
                | {
                    "duplicate": True,
                    "licence_id": existing.licence_id,
                    "counter": existing.counter,
                },
            )
        licence = session.get(Licence, report.licence_id)
        if licence is None or licence.device_id != device.id:
            return Outcome(
                404,
                {"detail": f"licence {report.licence_id} is not a licence of device {device.id}"},
            )
        highest = session.scalar(
            select(func.max(UsageReport.counter)).where(UsageReport.licence_id == licence.id)
        )
        if highest is not None and report.counter < highest:
            return Outcome(
                409,
                {
                    "detail": f"counter {report.counter} is lower than the "
                    f"{highest} already reported for licence {licence.id}: "
                    "counters are monotonic"
                },
            )
        session.add(
            UsageReport(
                device_id=device.id,
                report_id=report.report_id,
                licence_id=licence.id,
                counter=report.counter,
                received_at=_ts(now),
            )
        )
        over = licence.inferences is not None and report.counter > licence.inferences
        audit(
            session,
            f"device:{device.id}",
            "usage.over_allowance" if over else "usage.report",
            f"licence:{licence.id}",
            {"report_id": report.report_id, "counter": report.counter}
            | ({"allowance": licence.inferences} if over else {}),
        )
        return Outcome(200, receipt)

    return _with_replay_retry(sessions, attempt)
