"""The licence decision: a function of (request, database state, now) that only reads.

Checks, in order (the first failure is the reason): signature (against the registered device
key, or for a new device the key in the body) → ``bad_signature``; timestamp outside ±300 s →
``stale_request``; nonce already seen for the device → ``replayed_request``; a known device
presenting other keys → ``device_key_mismatch``; ``unknown_application``;
``unknown_model`` (only when the application lists its models); ``customer_not_proven`` (only
when the application's public key is registered: the request carries no configuration signed
by it for this application, customer and models); ``unknown_customer``; a known
device of another customer → ``device_customer_mismatch``;
``device_revoked``; ``contract_ended`` (also when the contract ends by the request's
timestamp, a device clock ahead of the server's: :func:`ended_on_device`); a new device when
the customer already has ``max_devices`` registered devices, revoked ones included →
``too_many_devices``; no quota left → ``quota_exhausted``. Between ``contract_ended`` and
``too_many_devices``: a request that ``supersedes`` an earlier request of the device that was
granted, or answered with a licence granted to one it superseded, whose answer was lost
(:func:`resendable`) → :class:`Resend`, that licence again; a
request that ``renews`` a licence a new one would not better (:func:`renewed_licence`) →
:class:`Keep`. Neither grants nor charges anything (so neither the device limit nor the quota
is checked).

Allow: expiry = min(now + (device override, else customer default duration), contract end);
allowance (customers with a quota) = min(remaining quota, requested inferences if given). The
remaining quota is ``inference_quota - inferences_granted``: inferences granted to a licence
that is later replaced are not given back (a renewal gets what remains of the quota).

The caller runs :func:`decide` inside the transaction that applies the decision: the customer
row is read ``FOR UPDATE`` (PostgreSQL) or under ``BEGIN IMMEDIATE`` (SQLite), so two
concurrent requests can never both spend the same remaining quota.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import func, literal, select, union_all
from sqlalchemy.orm import Session

from sklicense.crud import count_devices, get_application_by_name
from sklicense.models import (
    Application,
    Customer,
    Device,
    Licence,
    LicenceResend,
    SeenNonce,
    UsageReport,
)
from sklicense.schemas import LicenceRequestIn
from skruntime.licensing.protocol import TIMESTAMP_WINDOW_S, unb64, verify

UNKNOWN_MODELS_NAMED = 5
"""An ``unknown_model`` denial names this many (the audit log keeps every denial)."""


@dataclass(frozen=True)
class Allow:
    application: Application
    customer: Customer
    device: Device | None  # None: a new device, registered when the decision is applied
    issued_at: int
    expires_at: int
    inferences: int | None


@dataclass(frozen=True)
class Deny:
    reason: str
    detail: str
    #: False when the request is not authenticated or already seen: its nonce is not recorded.
    record_nonce: bool = True


@dataclass(frozen=True)
class Keep:
    """The request renews a licence of the device that a new one would not better: it stays
    the device's licence, nothing is issued or drawn from the quota."""

    licence: Licence


@dataclass(frozen=True)
class Resend:
    """The licence already granted to the request, or to an earlier request of the device that
    it ``supersedes``: answered again, nothing is issued or drawn from the quota."""

    licence: Licence
    device: Device
    application: Application
    #: The nonce, of those the request names, of the request the licence was granted to or
    #: answered to (:class:`~sklicense.models.LicenceResend`): the answer's ``request_nonce``,
    #: which a runtime checks it named (every runtime before 2026-12-07 refused another one).
    answered: str


Decision = Allow | Deny | Keep | Resend


def signed_with(
    body: dict[str, Any],
    signature: str | None,
    public_key_b64: str,
    verified: bytes | None = None,
) -> bytes | None:
    """The raw bytes of ``public_key_b64`` when ``signature`` over ``body`` verifies with it,
    else None. ``verified`` is the key that already verified this very body and signature
    (before the transaction): when ``public_key_b64`` is still that key, the signature is not
    verified a second time; when it changed in between (the device was registered with another
    key), it is."""
    if not signature:
        return None
    try:
        raw = unb64(public_key_b64)
        if verified is not None and raw == verified:
            return raw
        key = Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        return None
    return raw if verify(body, signature, key) else None


def bad_signature(*, registered: bool) -> Deny:
    """The denial of a request whose signature does not verify (its nonce is not recorded)."""
    whose = "the device's registered key" if registered else "the key in the request"
    return Deny("bad_signature", f"the request signature does not verify with {whose}", False)


def unregistered(device_id: str) -> Deny:
    """The denial of a usage report naming a device that is not registered: it has no key to
    verify the report with (its nonce is not recorded), and no licence of this server to
    report on, so the device drops the report (``unknown_device``, not ``bad_signature``,
    which it sends again)."""
    return Deny("unknown_device", f"device {device_id} is not registered", False)


def counter_behind(licence_id: str, counter: int, highest: int) -> Deny:
    """The denial of a usage report whose counter is lower than one already stored for its
    licence (counters are totals: the device's state folder was restored from a backup, say):
    the server already counts more, so the device does not send it again."""
    return Deny(
        "counter_behind",
        f"counter {counter} is lower than the {highest} already reported for licence "
        f"{licence_id}: counters are monotonic",
    )


def unknown_licence(licence_id: str, device_id: str) -> Deny:
    """The denial of a usage report on a licence this server did not issue to the device (it
    never will): the device drops the report."""
    return Deny("unknown_licence", f"licence {licence_id} is not a licence of device {device_id}")


def stale_request(timestamp: int, now: int) -> Deny | None:
    """``stale_request`` when a request's ``timestamp`` is more than :data:`TIMESTAMP_WINDOW_S`
    from the server time ``now`` (its nonce is not recorded), else None."""
    if abs(now - timestamp) <= TIMESTAMP_WINDOW_S:
        return None
    return Deny(
        "stale_request",
        f"request timestamp {timestamp} differs from the server time {now} by "
        f"{abs(now - timestamp)} s; allowed ±{TIMESTAMP_WINDOW_S} s: check the device clock",
        False,
    )


def check_message(
    session: Session,
    device: Device | None,
    signing_key_b64: str,
    body: dict[str, Any],
    signature: str | None,
    timestamp: int,
    nonce: str,
    now: int,
    verified: bytes | None = None,
) -> Deny | None:
    """Signature, timestamp window and nonce checks shared by every device request
    (``verified``: see :func:`signed_with`)."""
    if signed_with(body, signature, signing_key_b64, verified) is None:
        return bad_signature(registered=device is not None)
    stale = stale_request(timestamp, now)
    if stale is not None:
        return stale
    seen = session.scalar(
        select(SeenNonce.id).where(
            SeenNonce.device_id == device_id_of(body), SeenNonce.nonce == nonce
        )
    )
    if seen is not None:
        return Deny("replayed_request", f"nonce {nonce} was already used by this device", False)
    return None


def check_configuration(application: Application, request: LicenceRequestIn) -> Deny | None:
    """The request's configuration must be signed by the application's registered key and name
    this application, the request's customer and every model it asks for: a device cannot
    charge (or be licensed by) a customer its vendor did not ship this configuration to."""

    def unproven(detail: str) -> Deny:
        return Deny("customer_not_proven", detail)

    config = request.configuration
    if config is None:
        return unproven(
            f"application {application.name!r} requires the signed configuration in licence "
            "requests: update skruntime on the device"
        )
    key = Ed25519PublicKey.from_public_bytes(unb64(application.public_key or ""))
    if not verify(config.payload, config.signature, key):
        return unproven(
            f"the configuration is not signed by the registered key of application "
            f"{application.name!r}: it was modified, or is another application's"
        )
    payload = config.payload
    customer = payload.get("customer")
    named = customer.get("id") if isinstance(customer, dict) else None
    models = payload.get("models")
    missing = sorted(set(request.models) - set(models if isinstance(models, dict) else ()))
    if payload.get("application") != application.name:
        return unproven(
            f"the configuration is of application {payload.get('application')!r}, "
            f"not {application.name!r}"
        )
    if isinstance(named, bool) or named != request.customer_id:
        return unproven(
            f"the configuration is licensed to customer {named!r}, not customer "
            f"{request.customer_id}"
        )
    if missing:
        return unproven(f"the configuration has no model named {', '.join(map(repr, missing))}")
    return None


def device_id_of(body: dict[str, Any]) -> str:
    return str(body.get("device_id", ""))


def decide(
    session: Session,
    request: LicenceRequestIn,
    body: dict[str, Any],
    signature: str | None,
    now: int,
    verified: bytes | None = None,
) -> Decision:
    """Decide a licence request; reads only (locks the customer row for the transaction).
    ``verified``: the device key that verified the signature before the transaction (see
    :func:`signed_with`)."""
    customer = session.get(Customer, request.customer_id, with_for_update=True)
    device = session.get(Device, request.device_id)
    signing_key = device.signing_public_key if device else request.signing_public_key
    denied = check_message(
        session,
        device,
        signing_key,
        body,
        signature,
        request.timestamp,
        request.nonce,
        now,
        verified,
    )
    if denied is not None:
        return denied
    if device is not None and (
        device.signing_public_key != request.signing_public_key
        or device.exchange_public_key != request.exchange_public_key
    ):
        return Deny(
            "device_key_mismatch",
            f"device {device.id} is registered with other public keys than the request presents",
        )
    application = get_application_by_name(session, request.application)
    if application is None:
        return Deny("unknown_application", f"application {request.application!r} is not known")
    if application.models is not None:
        unknown = sorted(set(request.models) - set(application.models))
        if unknown:
            more = len(unknown) - UNKNOWN_MODELS_NAMED
            return Deny(
                "unknown_model",
                f"application {application.name!r} has no model named "
                f"{', '.join(repr(m) for m in unknown[:UNKNOWN_MODELS_NAMED])}"
                + (f" and {more} more" if more > 0 else ""),
            )
    if application.public_key is not None:
        unproven = check_configuration(application, request)
        if unproven is not None:
            return unproven
    if customer is None:
        return Deny("unknown_customer", f"customer {request.customer_id} is not known")
    if device is not None and device.customer_id != customer.id:
        return Deny(
            "device_customer_mismatch",
            f"device {device.id} is registered to customer {device.customer_id}, "
            f"not customer {customer.id}",
        )
    if device is not None and device.status == "revoked":
        return Deny("device_revoked", f"device {device.id} is revoked")
    # licences are in whole seconds: a contract ending within this second leaves no licence
    end = None if customer.contract_end is None else math.floor(customer.contract_end.timestamp())
    if end is not None and end <= now:
        return Deny(
            "contract_ended",
            f"the contract of customer {customer.id} ended at {customer.contract_end.isoformat()}",
        )
    if end is not None and end <= request.timestamp:
        return ended_on_device(customer.id, customer.contract_end, request.timestamp, now)
    duration = (
        device.duration_override_seconds
        if device is not None and device.duration_override_seconds is not None
        else customer.default_licence_seconds
    )
    expires_at = now + duration
    if end is not None:
        expires_at = min(expires_at, end)
    resent = resendable(session, request, request.supersedes, now)
    if resent is not None:
        return resent
    kept = renewed_licence(session, request, device, application, expires_at, now)
    if kept is not None:
        return Keep(kept)
    if device is None:
        registered, revoked = count_devices(session, customer.id)
        if registered >= customer.max_devices:
            of_them = (
                f", {revoked} of them revoked (a revoked device keeps its slot: raise "
                "max_devices to register a replacement)"
                if revoked
                else ""
            )
            return Deny(
                "too_many_devices",
                f"customer {customer.id} already has {registered} registered devices "
                f"(maximum {customer.max_devices}){of_them}",
            )
    inferences: int | None = None
    if customer.inference_quota is not None:
        remaining = customer.inference_quota - customer.inferences_granted
        if remaining <= 0:
            return quota_exhausted(
                customer.id, customer.inference_quota, customer.inferences_granted
            )
        inferences = remaining
        if request.requested_inferences is not None:
            inferences = min(remaining, request.requested_inferences)
    return Allow(application, customer, device, now, expires_at, inferences)


def quota_exhausted(customer_id: int, quota: int, granted: int) -> Deny:
    """``quota_exhausted`` saying what was granted: the whole quota, or more than a quota an
    administrator lowered below the inferences already granted."""
    if granted > quota:
        return Deny(
            "quota_exhausted",
            f"customer {customer_id} was granted {granted} inferences, more than its quota of "
            f"{quota} (lowered since): raise the quota above {granted} to grant more",
        )
    return Deny(
        "quota_exhausted",
        f"customer {customer_id} was granted its whole quota of {quota} inferences",
    )


def ended_on_device(customer_id: int, contract_end: dt.datetime, timestamp: int, now: int) -> Deny:
    """``contract_ended`` for a request stamped at or after the contract end by a device whose
    clock is ahead of the server's (by at most the timestamp window): a licence ending at the
    contract end would have expired on arrival, and the device would refuse it after its
    allowance was drawn from the quota, at every retry."""
    return Deny(
        "contract_ended",
        f"the contract of customer {customer_id} ends at {contract_end.isoformat()}, not after "
        f"the request's timestamp {timestamp}: the device's clock is {timestamp - now} s ahead of "
        "the server's, so a licence would have expired on arrival. Check the device's clock "
        "(NTP)",
    )


def renewed_licence(
    session: Session,
    request: LicenceRequestIn,
    device: Device | None,
    application: Application,
    expires_at: int,
    now: int,
) -> Licence | None:
    """The licence the request ``renews`` when a renewal expiring at ``expires_at`` would not
    better it: a licence of this device, customer and application, valid at ``now``, holding
    every model asked for and expiring at ``expires_at`` too (the contract end, typically).
    None otherwise, and the request is a plain one: a renewal that expires later extends the
    licence, and one that expires sooner (a contract or licence duration shortened since) is
    issued too, so that the shorter term takes effect."""
    if request.renews is None or device is None:
        return None
    licence = session.get(Licence, request.renews)
    if (
        licence is None
        or licence.device_id != device.id
        or licence.customer_id != device.customer_id
        or licence.application_id != application.id
        or not set(request.models) <= set(licence.models)
    ):
        return None
    expiry = math.floor(licence.expires_at.timestamp())
    return licence if now < expiry == expires_at else None


def resendable(
    session: Session, request: LicenceRequestIn, nonces: list[str], now: int
) -> Resend | None:
    """The latest licence granted to a request of this device whose nonce is one of ``nonces``
    (the request's own, sent again; or those it ``supersedes``: earlier ones whose answer was
    lost), or answered to one of them in its place (:class:`~sklicense.models.LicenceResend`:
    a long chain names only its first and latest requests), when it may be sent again for
    ``request``: for its customer, application and models,
    the device active, the licence unexpired and not outliving the customer's contract (moved
    earlier since), its allowance not reported used up. Else None: a request that was denied,
    or reused for another request, or a licence no longer good. A device naming nonces it did
    not send gains nothing: only a licence already granted (and charged) to it is answered,
    wrapped to its own key. A licence reported used up reached the device, whose runtime drops
    its counter once that report is acknowledged: sent again, it would be counted again from 0
    by the process that lost its answer."""
    if not nonces:
        return None
    named = union_all(  # the request each licence was granted to first, then those noted
        select(
            Licence.id.label("licence_id"),
            Licence.request_nonce.label("nonce"),
            literal(0).label("noted"),
        ).where(Licence.device_id == request.device_id, Licence.request_nonce.in_(nonces)),
        select(LicenceResend.licence_id, LicenceResend.nonce, literal(1)).where(
            LicenceResend.device_id == request.device_id, LicenceResend.nonce.in_(nonces)
        ),
    ).subquery()
    found = session.execute(
        select(Licence, named.c.nonce)
        .join(named, named.c.licence_id == Licence.id)
        .where(Licence.device_id == request.device_id)
        .order_by(Licence.issued_at.desc(), named.c.noted, named.c.nonce)
        .limit(1)
    ).first()
    if found is None:
        return None
    row, answered = found
    device = session.get(Device, row.device_id)
    application = session.get(Application, row.application_id)
    customer = session.get(Customer, row.customer_id)
    if (
        device is None
        or application is None
        or customer is None
        or (customer.contract_end is not None and row.expires_at > customer.contract_end)
        or device.status != "active"
        or row.customer_id != request.customer_id
        or application.name != request.application
        or list(row.models) != list(request.models)
        or row.expires_at.timestamp() <= now
        or (
            row.inferences is not None
            and (highest_reported(session, row.id) or 0) >= row.inferences
        )
    ):
        return None
    return Resend(row, device, application, answered)


def highest_reported(session: Session, licence_id: str) -> int | None:
    """The highest counter reported for the licence (counters are totals), or None."""
    return session.scalar(
        select(func.max(UsageReport.counter)).where(UsageReport.licence_id == licence_id)
    )
