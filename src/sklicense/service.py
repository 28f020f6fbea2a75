"""Applying decisions: one transaction per device request (decide, then write, then commit)."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import uuid
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from sklicense import db
from sklicense.crud import audit, rate_hit_in
from sklicense.crypto import sign_licence, wrap_kek
from sklicense.decision import (
    Allow,
    Deny,
    Keep,
    Resend,
    check_message,
    counter_behind,
    decide,
    highest_reported,
    resendable,
    signed_with,
    stale_request,
    unknown_licence,
    unregistered,
)
from sklicense.models import Application, Device, Licence, LicenceResend, SeenNonce, UsageReport
from sklicense.schemas import MAX_SUPERSEDED, LicenceRequestIn, UsageReportIn
from skruntime.licensing.protocol import KEEP_DECISION, TIMESTAMP_WINDOW_S

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    status: int
    body: dict[str, Any]


def _ts(seconds: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


NONCE_RETENTION_S = 2 * TIMESTAMP_WINDOW_S
"""How long a device request's nonce is remembered: the timestamp window, plus the window again
as the margin. A request is accepted only while its timestamp is within
:data:`TIMESTAMP_WINDOW_S` of the server time, and its nonce was recorded within that window
too, so more than twice the window after the nonce was recorded the request is refused as
stale whatever its nonce (also by another server process whose clock differs: each compares
the same timestamp with its own time)."""
NONCE_PRUNE_EVERY_S = 60
"""How often one process deletes expired nonces (server time)."""
NONCE_PRUNE_BATCH = 1000
"""The most nonces one prune deletes: a large backlog is deleted in batches, one per request."""

RESENDS_NOTED = 4 * MAX_SUPERSEDED
"""The most requests of one device noted as answered with a licence granted to one they
superseded (:func:`_note_resend`): its latest, since a chain names the latest requests of its
device (the runtime 8, the server takes 16). Unbounded, each request answered so (30 a minute
pass the default rate limit) added a row for ever."""

_nonces_pruned_at: dict[str, int] = {}
"""Per database URL: when this process last deleted expired nonces (a full batch: no entry)."""
_pruning = threading.Lock()


def remember_nonce(session: Session, device_id: str, nonce: str, now: int) -> None:
    """Record a nonce (:func:`forget_expired_nonces` deletes it once it is of no use)."""
    session.add(SeenNonce(device_id=device_id, nonce=nonce, seen_at=_ts(now)))


def _prune_due(url: str, now: int) -> bool:
    """Whether this process should prune the nonces of the database at ``url`` now (and note
    that it does): not in the minute after its last prune, unless the clock was set back."""
    with _pruning:
        last = _nonces_pruned_at.get(url)
        if last is not None and last <= now < last + NONCE_PRUNE_EVERY_S:
            return False
        _nonces_pruned_at[url] = now
        return True


def forget_expired_nonces(sessions: sessionmaker[Session], now: int) -> int | None:
    """Delete up to :data:`NONCE_PRUNE_BATCH` nonces, of any device, recorded more than
    :data:`NONCE_RETENTION_S` before ``now``, when this process has not done so in the last
    :data:`NONCE_PRUNE_EVERY_S` (or its last prune deleted a full batch: more are waiting).
    Returns how many were deleted (0 when the prune failed), or None when it was not due.

    Pruning all devices, not the requesting one's: a device that never asks again (a one-off
    identity) would keep its nonces for ever. Once a minute and bounded, in a transaction of
    its own after the request's, so that it holds no request's locks; on PostgreSQL the rows
    another server process is deleting are skipped, not waited for. A prune that fails is
    logged, not raised: the request it follows is committed, and the next prune deletes what
    this one did not."""
    with sessions() as session:
        url = str(session.get_bind().url)
    if not _prune_due(url, now):
        return None
    expired = (
        select(SeenNonce.id)
        .where(SeenNonce.seen_at < _ts(now - NONCE_RETENTION_S))
        .limit(NONCE_PRUNE_BATCH)
        .with_for_update(skip_locked=True)  # rendered on PostgreSQL only
    )
    try:
        with sessions.begin() as session:
            result = session.execute(
                delete(SeenNonce)
                .where(SeenNonce.id.in_(expired))
                .execution_options(synchronize_session=False)
            )
    except SQLAlchemyError as e:
        logger.warning("expired nonces not deleted (retried in a minute): %s", e)
        return 0
    deleted = int(result.rowcount)
    if deleted >= NONCE_PRUNE_BATCH:
        with _pruning:
            _nonces_pruned_at.pop(url, None)
    return deleted


def _deny(deny: Deny, status: int = 403) -> Outcome:
    return Outcome(status, {"decision": "deny", "reason": deny.reason, "detail": deny.detail})


def _with_replay_retry(sessions: sessionmaker[Session], attempt: Any, now: int) -> Outcome:
    """Run ``attempt(session)``; a concurrent duplicate nonce/report (IntegrityError) is retried
    once, when the decision then sees the committed row. Then expired nonces are pruned, when
    due (:func:`forget_expired_nonces`)."""
    for tries in (1, 2):
        with sessions() as session:
            try:
                with session.begin():
                    outcome = attempt(session)
                break
            except IntegrityError:
                if tries == 2:
                    raise
    forget_expired_nonces(sessions, now)
    return outcome


def signed_by_device(
    sessions: sessionmaker[Session],
    device_id: str,
    body: dict[str, Any],
    signature: str | None,
    new_device_key: str | None = None,
) -> tuple[bytes | None, bool]:
    """The raw key a device request is signed with when that is the key of the device it names
    (its registered key; for a new device, ``new_device_key``: the key in a licence request),
    else None; and whether that device is registered. Only signed requests count against the
    device's rate limits, so nobody can exhaust another device's limit by sending unsigned
    requests in its name; a new device's count against its sender's address, since anyone can
    make a new identity for each request. The lookup takes no write lock
    (:func:`sklicense.db.reading`). The key is passed on to :func:`request_licence` or
    :func:`report_usage`, which verify the signature again only if the device's key changed in
    between."""
    with db.reading(sessions) as session:
        device = session.get(Device, device_id)
        key = device.signing_public_key if device else new_device_key
    verified = None if key is None else signed_with(body, signature, key)
    return verified, device is not None


def refuse_unsigned(what: str, device_id: str, deny: Deny) -> Outcome:
    """The answer to a device request (``what``: "licence request", "usage report") that its
    device did not sign, given after one read-only lookup and before the transaction that
    writes: anyone can send these, as fast as they like, so they neither lock a row nor add to
    the audit log (a WARNING in the server log instead)."""
    logger.warning("%s naming device %r denied: %s (not audited)", what, device_id, deny.detail)
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
            return refuse_unsigned("licence request", request.device_id, decision)
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
        if isinstance(decision, Keep):
            return _keep(session, decision, request, now)
        if isinstance(decision, Resend):
            remember_nonce(session, request.device_id, request.nonce, now)
            return _resent(session, decision, request, key)
        return _allow(session, decision, request, now, key)

    return _with_replay_retry(sessions, attempt, now)


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


def _keep(session: Session, keep: Keep, request: LicenceRequestIn, now: int) -> Outcome:
    """The answer to a request that renews a licence a new one would not better: it stays the
    device's licence, nothing is issued or charged. Signed and bound to the request like every
    answer, so that the device can take it as the server's word that it may go on (checked, not
    revoked, the contract not extended)."""
    remember_nonce(session, request.device_id, request.nonce, now)
    licence = keep.licence
    expires_at = int(licence.expires_at.timestamp())
    audit(
        session,
        f"device:{request.device_id}",
        "licence.keep",
        f"customer:{licence.customer_id}",
        {"licence_id": licence.id, "application": request.application, "expires_at": expires_at},
    )
    return Outcome(
        200,
        {
            "decision": KEEP_DECISION,
            "licence_id": licence.id,
            "expires_at": expires_at,
            "detail": f"a renewal would expire at {_ts(expires_at).isoformat()} too: licence "
            f"{licence.id} stays valid, nothing is issued or drawn from the quota",
        },
    )


def _answer(
    row: Licence,
    device: Device,
    application: Application,
    key: Ed25519PrivateKey,
    answered: str | None = None,
) -> Outcome:
    """The signed licence document for a stored licence (its KEK wrapped to the device);
    ``answered``: its ``request_nonce`` when not the request it was granted to (a resend,
    :attr:`Resend.answered`)."""
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
        "request_nonce": answered or row.request_nonce,
        "wrapped_kek": wrapped,
    }
    return Outcome(200, sign_licence(licence, key))


def _resent(
    session: Session, resend: Resend, request: LicenceRequestIn, key: Ed25519PrivateKey
) -> Outcome:
    """The signed licence document of ``resend``, audited as ``licence.resend`` (naming the
    request it was granted to when ``request`` superseded that one, and noting ``request`` as
    answered with it: :func:`_note_resend`)."""
    row = resend.licence
    superseded = {} if row.request_nonce == request.nonce else {"granted_to": row.request_nonce}
    if superseded:
        _note_resend(session, request.device_id, request.nonce, row.id)
    audit(
        session,
        f"device:{resend.device.id}",
        "licence.resend",
        f"customer:{row.customer_id}",
        {"licence_id": row.id, "application": resend.application.name} | superseded,
    )
    return _answer(row, resend.device, resend.application, key, resend.answered)


def _note_resend(session: Session, device_id: str, nonce: str, licence_id: str) -> None:
    """Note that the device's request ``nonce`` was answered with licence ``licence_id``,
    granted to a request it superseded (once: it may be sent again): a later request naming
    this one, its answer lost as well, gets that licence too, though the request it was
    granted to has dropped out of the chain the device names (the first and the latest)."""
    noted = session.scalar(
        select(LicenceResend.id).where(
            LicenceResend.device_id == device_id, LicenceResend.nonce == nonce
        )
    )
    if noted is None:
        session.add(LicenceResend(device_id=device_id, nonce=nonce, licence_id=licence_id))
        _forget_old_resends(session, device_id)


def _forget_old_resends(session: Session, device_id: str) -> None:
    """Delete the device's notes (:func:`_note_resend`) but its latest
    :data:`RESENDS_NOTED`: the table's bound, a device's chain naming its latest requests."""
    session.flush()
    oldest_kept = session.scalar(
        select(LicenceResend.id)
        .where(LicenceResend.device_id == device_id)
        .order_by(LicenceResend.id.desc())
        .offset(RESENDS_NOTED - 1)
        .limit(1)
    )
    if oldest_kept is not None:
        session.execute(
            delete(LicenceResend)
            .where(LicenceResend.device_id == device_id, LicenceResend.id < oldest_kept)
            .execution_options(synchronize_session=False)
        )


def _resend(
    session: Session, request: LicenceRequestIn, now: int, key: Ed25519PrivateKey
) -> Outcome | None:
    """The licence already granted to this very request (or to one it supersedes), when a
    device sends it again (its answer was lost: a timeout, a proxy's 502): sent again, not
    charged again. None when it may not be (:func:`resendable`): then it stays
    ``replayed_request``, and the device asks afresh (a licence ending with the contract, or
    ``contract_ended``). A captured request replayed by someone else within the ±300 s window
    gets only what its device already got: a KEK wrapped to that device's key."""
    found = resendable(session, request, [request.nonce, *request.supersedes], now)
    return None if found is None else _resent(session, found, request, key)


def resend_past_limit(
    sessions: sessionmaker[Session], request: LicenceRequestIn, now: int, key: Ed25519PrivateKey
) -> Outcome | None:
    """The licence already granted to this signed request (verified by :func:`signed_by_device`),
    or to one it supersedes, when its device, past its rate limit, sends it (again) inside the
    timestamp window, else None (the device is answered ``rate_limited``). Refusing it would
    lose a licence the quota was already charged for, and the device would ask afresh and be
    charged again; answering it grants nothing. Looked up without a write lock and logged at
    WARNING, not audited nor noted (:func:`_note_resend`): a captured request replayed in a
    loop adds no row (the first resend of a minute, under the limit, is audited as
    ``licence.resend``)."""
    if stale_request(request.timestamp, now) is not None:
        return None
    with db.reading(sessions) as session:
        found = resendable(session, request, [request.nonce, *request.supersedes], now)
        if found is None:
            return None
        row, device = found.licence, found.device
        logger.warning(
            "licence %s resent to device %s past its rate limit (not audited)", row.id, device.id
        )
        return _answer(row, device, found.application, key, found.answered)


_AUDITED_ONCE_A_MINUTE = ("stale_request", "replayed_request")
"""Refusals of a usage report that a replayed capture repeats: audited once a minute."""


def report_usage(
    sessions: sessionmaker[Session],
    report: UsageReportIn,
    body: dict[str, Any],
    signature: str | None,
    now: int,
    verified: bytes | None = None,
) -> Outcome:
    """Apply a usage report in one transaction: idempotent per ``report_id``, counters
    monotonic per licence. The licence row is locked (``FOR UPDATE`` on PostgreSQL; SQLite
    has one writer at a time), so that two concurrent reports cannot both pass the
    monotonicity check and store a counter lower than one stored before it. ``verified``: see
    :func:`request_licence`. A revoked device may still report: what it ran is accounting.
    A refusal of a report its device signed is audited as ``usage.deny``, as a licence
    request's is as ``licence.deny``."""

    def denied_report(session: Session, deny: Deny, status: int = 403) -> Outcome:
        """The refusal of the report, audited (its device signed it: :func:`signed_by_device`
        verified it with the key of the registered device, and a device's key never changes).
        A stale or replayed report only once a minute per device and reason: one captured
        report replayed in a loop would add up to a row per report allowed
        (``usage_reports_per_minute``), for ever."""
        if deny.reason in _AUDITED_ONCE_A_MINUTE and (
            rate_hit_in(session, f"audit-usage-{deny.reason}:{report.device_id}", now) > 1
        ):
            logger.warning(
                "usage report of device %r denied: %s (audited once a minute)",
                report.device_id,
                deny.detail,
            )
            return _deny(deny, status)
        audit(
            session,
            f"device:{report.device_id}",
            "usage.deny",
            f"licence:{report.licence_id}",
            {"reason": deny.reason, "detail": deny.detail},
        )
        return _deny(deny, status)

    def attempt(session: Session) -> Outcome:
        device = session.get(Device, report.device_id)
        if device is None:
            return _deny(unregistered(report.device_id))
        denied = check_message(
            session,
            device,
            device.signing_public_key,
            body,
            signature,
            report.timestamp,
            report.nonce,
            now,
            verified,
        )
        if denied is not None:
            return denied_report(session, denied)
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
        licence = session.get(Licence, report.licence_id, with_for_update=True)
        if licence is None or licence.device_id != device.id:
            return denied_report(session, unknown_licence(report.licence_id, device.id), 404)
        highest = highest_reported(session, licence.id)
        if highest is not None and report.counter < highest:
            return denied_report(session, counter_behind(licence.id, report.counter, highest), 409)
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

    return _with_replay_retry(sessions, attempt, now)
