"""Database operations shared by the HTTP API and the CLI (each caller owns the transaction)."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import secrets
from collections import Counter
from typing import Any

from sqlalchemy import Connection, Engine, Select, case, delete, func, literal, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from sklicense.models import (
    AdminToken,
    Application,
    AuditLog,
    Customer,
    Device,
    Licence,
    RateCounter,
    UsageReport,
    utcnow,
)
from sklicense.schemas import (
    INT32_MAX,
    INT64_MAX,
    MAX_LICENCE_SECONDS,
    MAX_MODELS,
    MAX_NAME,
    application_name_problem,
    application_public_key,
    text_problem,
)

ROLES = ("admin", "read-only")
KEK_BYTES = 32
RATE_WINDOW_S = 60
RATE_KEY_CHARS = 300
"""The length of ``rate_counters.key`` (PostgreSQL refuses a longer value)."""
FINGERPRINT_CHARS = 12


class CrudError(ValueError):
    """An admin request that cannot be applied; ``status`` is the HTTP status to answer (422
    by default: the request is well-formed JSON but its values cannot be applied)."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


# -- audit ---------------------------------------------------------------------------------------


def audit(
    session: Session, actor: str, action: str, target: str, detail: dict[str, Any] | None = None
) -> AuditLog:
    """Append one audit entry (the caller commits it with the action it records)."""
    entry = AuditLog(at=utcnow(), actor=actor, action=action, target=target, detail=detail or {})
    session.add(entry)
    return entry


def paged(stmt: Select[Any], limit: int | None, offset: int) -> Select[Any]:
    """``stmt`` (in a total order) from its ``offset``-th row, at most ``limit`` rows (None:
    all, as the CLI lists them; the admin API answers pages, its lists growing with devices)."""
    return stmt.limit(limit).offset(offset)


def list_audit(session: Session, limit: int = 100, offset: int = 0) -> list[AuditLog]:
    stmt = select(AuditLog).order_by(AuditLog.id.desc()).limit(limit).offset(offset)
    return list(session.scalars(stmt))


# -- admin tokens --------------------------------------------------------------------------------


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(
    session: Session, role: str, actor: str, expires_at: dt.datetime | None = None
) -> str:
    """Create a bearer token with ``role``, valid until ``expires_at`` (None: until revoked);
    returns the token (only its SHA-256 is stored)."""
    if role not in ROLES:
        raise CrudError(f"role must be one of {', '.join(ROLES)}, but got {role!r}")
    now = utcnow()
    if expires_at is not None and (expires_at.tzinfo is None or expires_at <= now):
        raise CrudError(
            f"expires_at must be a timezone-aware time in the future, but got {expires_at!r}"
        )
    token = "skl_" + secrets.token_urlsafe(32)
    row = AdminToken(
        token_sha256=token_sha256(token), role=role, created_at=now, expires_at=expires_at
    )
    session.add(row)
    session.flush()
    detail = {"role": role, "expires_at": _jsonable(expires_at)}
    audit(session, actor, "token.create", f"token:{row.id}", detail)
    return token


def token_fingerprint(token: str) -> str:
    """What names a token in listings and as the audit log's actor (``token:<fingerprint>``)."""
    return token_sha256(token)[:FINGERPRINT_CHARS]


def token_role(session: Session, token: str, now: dt.datetime | None = None) -> str | None:
    """The role of a stored token that has not expired at ``now`` (default: the current
    time), else None."""
    row = session.scalar(select(AdminToken).where(AdminToken.token_sha256 == token_sha256(token)))
    if row is None or (row.expires_at is not None and row.expires_at <= (now or utcnow())):
        return None
    return row.role


def token_expired(session: Session, token: str, now: dt.datetime) -> dt.datetime | None:
    """When a stored token expired, if it did at or before ``now``; else None (unknown, or
    still valid): its holder is told so, not that the token is invalid."""
    row = session.scalar(select(AdminToken).where(AdminToken.token_sha256 == token_sha256(token)))
    if row is None or row.expires_at is None or row.expires_at > now:
        return None
    return row.expires_at


def token_row(row: AdminToken) -> dict[str, Any]:
    """A token as listed: never the token, the start of its SHA-256 instead."""
    return {
        "id": row.id,
        "role": row.role,
        "created_at": row.created_at,
        "expires_at": row.expires_at,
        "fingerprint": row.token_sha256[:FINGERPRINT_CHARS],
    }


def list_tokens(session: Session) -> list[AdminToken]:
    return list(session.scalars(select(AdminToken).order_by(AdminToken.id)))


def revoke_token(session: Session, token_id: int, actor: str) -> AdminToken:
    """Delete the token: its next request gets 401 (each request looks the token up)."""
    if not 0 <= token_id <= INT32_MAX:  # before the lookup, which cannot bind it
        raise CrudError(f"token id must be in [0, {INT32_MAX}], but got {token_id}")
    row = session.get(AdminToken, token_id)
    if row is None:
        raise CrudError(f"token {token_id} not found", status=404)
    session.delete(row)
    listed = token_row(row)
    detail = {"role": listed["role"], "fingerprint": listed["fingerprint"]}
    audit(session, actor, "token.revoke", f"token:{token_id}", detail)
    return row


# -- rate limits ---------------------------------------------------------------------------------


def _upsert(engine: Engine):  # type: ignore[no-untyped-def]
    return pg_insert if engine.dialect.name == "postgresql" else sqlite_insert


def rate_hit(engine: Engine, key: str, now: int) -> int:
    """Count one event for ``key`` in the current minute; returns the count (atomic upsert)."""
    with engine.begin() as connection:
        return _count_hit(connection, engine, key, now)


def rate_hit_in(session: Session, key: str, now: int) -> int:
    """:func:`rate_hit` inside ``session``'s transaction (on SQLite a second connection would
    wait for the write lock that transaction holds)."""
    return _count_hit(session, session.get_bind(), key, now)


def rate_key(key: str) -> str:
    """``key`` as stored in ``rate_counters`` (at most :data:`RATE_KEY_CHARS`): a longer one,
    such as a client address that a trusted proxy forwards as whatever the client sent in
    ``X-Forwarded-For``, is its start and its SHA-256 (PostgreSQL failed it with a 500)."""
    if len(key) <= RATE_KEY_CHARS:
        return key
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{key[: RATE_KEY_CHARS - len(digest) - 1]}#{digest}"


def _count_hit(
    connection: Connection | Session, bind: Engine | Connection, key: str, now: int
) -> int:
    window = now - now % RATE_WINDOW_S
    stmt = _upsert(bind)(RateCounter).values(key=rate_key(key), window_start=window, count=1)
    stmt = stmt.on_conflict_do_update(
        index_elements=["key", "window_start"], set_={"count": RateCounter.count + 1}
    ).returning(RateCounter.count)
    count = connection.execute(stmt).scalar_one()
    if count == 1:  # first event of a window: forget windows older than an hour
        connection.execute(delete(RateCounter).where(RateCounter.window_start < window - 3600))
    return int(count)


# -- applications --------------------------------------------------------------------------------


def decode_kek(text: str) -> bytes:
    """The KEK from the base64 text ``skprotect export-kek`` writes (32 bytes)."""
    try:
        kek = base64.b64decode(text.strip().encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise CrudError("kek must be base64 text (as `skprotect export-kek` writes)") from None
    if len(kek) != KEK_BYTES:
        raise CrudError(f"kek must decode to {KEK_BYTES} bytes, but got {len(kek)} bytes")
    return kek


def decode_public_key(text: str) -> str:
    """The application's configuration public key (as ``skprotect export-kek`` prints it, or
    the ``public_key`` of a configuration file), checked as the admin API checks it."""
    try:
        return application_public_key(text)
    except ValueError as err:
        raise CrudError(f"public_key {err} (the line `skprotect export-kek` prints)") from None


def _insert(session: Session, row: Any, conflict: str) -> None:
    """Add ``row``; a concurrent insert of the same key is a 409, not a 500 (the lookup before
    it saw nothing: two admins created the same row at once)."""
    session.add(row)
    try:
        session.flush()
    except IntegrityError:
        raise CrudError(conflict, status=409) from None


def get_application_by_name(session: Session, name: str) -> Application | None:
    if text_problem(name):  # no such row can exist, and PostgreSQL cannot bind NUL
        return None
    return session.scalar(select(Application).where(Application.name == name))


def get_application(session: Session, name: str) -> Application:
    application = get_application_by_name(session, name)
    if application is None:
        raise CrudError(f"application {name!r} not found", status=404)
    return application


def check_models(models: list[str] | None) -> list[str] | None:
    """An application's model list: None (any model) or 1 to 1,000 distinct names of 1 to 200
    characters. An empty list would deny every licence request (``unknown_model``); a name
    given twice is a typo more often than not (the admin meant another model)."""
    if models is None:
        return None
    if not models:
        raise CrudError("models must name at least one model, or be null for any model, but got []")
    if len(models) > MAX_MODELS:
        raise CrudError(f"models must name at most {MAX_MODELS} models, but got {len(models)}")
    for model in models:
        if not 1 <= len(model) <= MAX_NAME:
            raise CrudError(f"model names must be 1 to {MAX_NAME} characters, but got {len(model)}")
        problem = text_problem(model)
        if problem:
            raise CrudError(f"model names {problem}")
    twice = sorted(model for model, count in Counter(models).items() if count > 1)
    if twice:
        raise CrudError(
            f"models must name each model once, but {', '.join(map(repr, twice))} appear more "
            "than once: remove the repeats (or name the model you meant)"
        )
    return models


def create_application(
    session: Session,
    name: str,
    kek: bytes | None,
    actor: str,
    models: list[str] | None = None,
    public_key: str | None = None,
) -> Application:
    problem = application_name_problem(name)
    if problem:
        raise CrudError(f"name {problem}")
    check_models(models)
    if get_application_by_name(session, name) is not None:
        raise CrudError(f"application {name!r} already exists", status=409)
    key = None if public_key is None else decode_public_key(public_key)
    app = Application(name=name, kek=kek, models=models, public_key=key, created_at=utcnow())
    _insert(session, app, f"application {name!r} already exists")
    detail = {"kek": kek is not None, "models": models, "public_key": key}
    audit(session, actor, "application.create", f"application:{name}", detail)
    return app


def set_public_key(session: Session, app: Application, public_key: str, actor: str) -> Application:
    """Register (or replace) the key that signs the application's configuration files."""
    previous, app.public_key = app.public_key, decode_public_key(public_key)
    audit(
        session,
        actor,
        "application.set_public_key",
        f"application:{app.name}",
        {"public_key": app.public_key, "replaced": previous},
    )
    return app


def import_kek(session: Session, app: Application, kek: bytes, actor: str) -> Application:
    replaced = app.kek is not None
    app.kek = kek
    audit(
        session, actor, "application.import_kek", f"application:{app.name}", {"replaced": replaced}
    )
    return app


def set_models(
    session: Session, app: Application, models: list[str] | None, actor: str
) -> Application:
    """Replace the model names licences may name (None: any model)."""
    previous, app.models = app.models, check_models(models)
    audit(
        session,
        actor,
        "application.set_models",
        f"application:{app.name}",
        {"models": app.models, "replaced": previous},
    )
    return app


def list_applications(session: Session) -> list[Application]:
    return list(session.scalars(select(Application).order_by(Application.id)))


# -- customers -----------------------------------------------------------------------------------

CUSTOMER_FIELDS = (
    "name",
    "contract_end",
    "inference_quota",
    "max_devices",
    "default_licence_seconds",
)


def _check_customer(customer: Customer) -> None:
    for field in ("name", "max_devices", "default_licence_seconds"):
        if getattr(customer, field) is None:
            raise CrudError(f"{field} cannot be null: leave it out to keep its value")
    if not isinstance(customer.name, str) or not customer.name.strip() or len(customer.name) > 200:
        raise CrudError(
            f"name must be 1 to 200 characters and not blank, but got {customer.name!r}"
        )
    problem = text_problem(customer.name)
    if problem:
        raise CrudError(f"name {problem}")
    for field, high in (
        ("id", INT64_MAX),
        ("max_devices", INT32_MAX),
        ("inference_quota", INT64_MAX),
    ):
        value = getattr(customer, field)
        if value is not None and not 0 <= value <= high:
            raise CrudError(f"{field} must be in [0, {high}], but got {value}")
    if customer.default_licence_seconds > MAX_LICENCE_SECONDS:
        raise CrudError(
            f"default_licence_seconds must be at most {MAX_LICENCE_SECONDS} (100 years), but got "
            f"{customer.default_licence_seconds}"
        )
    if customer.contract_end is None and customer.inference_quota is None:
        raise CrudError(
            "a customer needs at least one policy: contract_end and/or inference_quota must be "
            "set, but both are empty"
        )
    if customer.max_devices < 1:
        raise CrudError(f"max_devices must be >= 1, but got {customer.max_devices}")
    if customer.default_licence_seconds < 1:
        raise CrudError(
            f"default_licence_seconds must be >= 1, but got {customer.default_licence_seconds}"
        )


def _jsonable(value: Any) -> Any:
    return value.isoformat() if isinstance(value, dt.datetime) else value


def create_customer(session: Session, actor: str, **fields: Any) -> Customer:
    if not 0 <= fields["id"] <= INT64_MAX:  # before the lookup, which cannot bind it
        raise CrudError(f"id must be in [0, {INT64_MAX}], but got {fields['id']}")
    if session.get(Customer, fields["id"]) is not None:
        raise CrudError(f"customer {fields['id']} already exists", status=409)
    customer = Customer(inferences_granted=0, created_at=utcnow(), **fields)
    _check_customer(customer)
    _insert(session, customer, f"customer {fields['id']} already exists")
    audit(
        session,
        actor,
        "customer.create",
        f"customer:{customer.id}",
        {k: _jsonable(v) for k, v in fields.items()},
    )
    return customer


def get_customer(session: Session, customer_id: int) -> Customer:
    customer = session.get(Customer, customer_id)
    if customer is None:
        raise CrudError(f"customer {customer_id} not found", status=404)
    return customer


def update_customer(session: Session, customer_id: int, actor: str, **changes: Any) -> Customer:
    if not changes:
        raise CrudError(f"nothing would change: give at least one of {', '.join(CUSTOMER_FIELDS)}")
    customer = session.get(Customer, customer_id, with_for_update=True)
    if customer is None:
        raise CrudError(f"customer {customer_id} not found", status=404)
    for key, value in changes.items():
        if key not in CUSTOMER_FIELDS:
            raise CrudError(f"cannot change customer field {key!r}")
        setattr(customer, key, value)
    _check_customer(customer)
    audit(
        session,
        actor,
        "customer.update",
        f"customer:{customer_id}",
        {k: _jsonable(v) for k, v in changes.items()},
    )
    return customer


def list_customers(session: Session, limit: int | None = None, offset: int = 0) -> list[Customer]:
    return list(session.scalars(paged(select(Customer).order_by(Customer.id), limit, offset)))


def customer_warning(
    session: Session, customer: Customer, changes: dict[str, Any], now: dt.datetime, fix: str
) -> str | None:
    """What to tell the admin after creating or changing a customer (``changes``: the fields
    set), or None: :func:`ended_contract_warning`, :func:`spent_quota_warning` and
    :func:`quota_warning`, in that order."""
    warnings = (
        ended_contract_warning(session, customer, changes, now, fix),
        spent_quota_warning(customer, changes),
        quota_warning(session, customer, changes, now),
        devices_warning(session, customer, changes),
    )
    return "; ".join(w for w in warnings if w) or None


def ended_contract_warning(
    session: Session, customer: Customer, changes: dict[str, Any], now: dt.datetime, fix: str
) -> str | None:
    """What to tell the admin whose ``changes`` set a contract end that is not in the future:
    recorded (it is how a customer is retired), but a typo (2025 for 2035) would otherwise
    show up only as ``contract_ended`` denials on the customer's devices, and the licences
    already issued stay valid until they expire. ``fix``: how to set another date."""
    end = changes.get("contract_end")
    if end is None or end > now:
        return None
    valid, latest = _valid_licences(session, customer, now)
    still = (
        f" ({valid} licence(s) already issued stay valid until they expire, the last at "
        f"{latest.isoformat()})"
        if valid
        else ""
    )
    return (
        f"the contract end {end.isoformat()} is not in the future: every licence "
        f"request of customer {customer.id} is denied contract_ended{still}. If that is a "
        f"mistake, set the right date: {fix}"
    )


def _valid_licences(
    session: Session, customer: Customer, now: dt.datetime, *where: Any
) -> tuple[int, dt.datetime | None]:
    """How many of the customer's licences (also matching ``where``) are valid at ``now``,
    and when the last of them expires."""
    count, latest = session.execute(
        select(func.count(), func.max(Licence.expires_at)).where(
            Licence.customer_id == customer.id, Licence.expires_at > now, *where
        )
    ).one()
    return count, latest


def spent_quota_warning(customer: Customer, changes: dict[str, Any]) -> str | None:
    """What to tell the admin whose ``changes`` set a quota that is not above the inferences
    already granted to the customer: recorded (a quota of 0 stops a customer), but the quota is
    a total, and one meant as "this many more" would otherwise show up only as
    ``quota_exhausted`` denials on the customer's devices."""
    quota = changes.get("inference_quota")
    granted = customer.inferences_granted
    if quota is None or quota > granted:
        return None
    return (
        f"the quota {quota} is not above the {granted} inferences already granted to "
        f"customer {customer.id}: every licence request that needs an allowance is denied "
        f"quota_exhausted (allowances already granted stay). The quota is the total since the "
        f"customer was created: to allow N more inferences, set it to {granted} + N"
    )


def devices_warning(session: Session, customer: Customer, changes: dict[str, Any]) -> str | None:
    """What to tell the admin whose ``changes`` set a device limit below the devices the
    customer already registered: they are not unregistered (rows are never deleted) and keep
    being licensed, which a limit meant to cut the customer's devices would otherwise hide."""
    limit = changes.get("max_devices")
    if limit is None:
        return None
    registered, revoked = count_devices(session, customer.id)
    if registered <= limit:
        return None
    active = registered - revoked
    said = (
        f"customer {customer.id} already has {registered} registered devices ({active} "
        f"active), more than max_devices {limit}: "
    )
    refused = (
        f"a new device is refused too_many_devices until the limit is above {registered} (a "
        "revoked device keeps its slot)"
    )
    if active == 0:  # all revoked: none is licensed, only the new devices are concerned
        return said + refused
    return (
        f"{said}the {active} active ones keep being licensed (devices are never "
        f"unregistered), and {refused}. To stop some of them, revoke them: sklicense device "
        "revoke ID (PATCH /v1/admin/devices/{id})"
    )


def quota_warning(
    session: Session, customer: Customer, changes: dict[str, Any], now: dt.datetime
) -> str | None:
    """What to tell the admin whose ``changes`` set a quota while licences issued without one
    are still valid: they stay unlimited until they expire (an allowance is fixed when signed)."""
    if changes.get("inference_quota") is None:
        return None
    count, latest = _valid_licences(session, customer, now, Licence.inferences.is_(None))
    if not count:
        return None
    return (
        f"customer {customer.id} has {count} licence(s) issued without a quota that stay "
        f"unlimited until they expire (the last at {latest.isoformat()}); the quota applies "
        "to licences issued from now on"
    )


# -- devices -------------------------------------------------------------------------------------


def list_devices(
    session: Session, customer_id: int | None = None, limit: int | None = None, offset: int = 0
) -> list[Device]:
    stmt = select(Device).order_by(Device.created_at, Device.id)
    if customer_id is not None:
        stmt = stmt.where(Device.customer_id == customer_id)
    return list(session.scalars(paged(stmt, limit, offset)))


def update_device(session: Session, device_id: str, actor: str, **changes: Any) -> Device:
    if not changes:
        raise CrudError("nothing would change: give status and/or duration_override_seconds")
    # no such device can exist, and neither database can bind a lone surrogate (from a command
    # line argument that is not UTF-8)
    device = None if text_problem(device_id) else session.get(Device, device_id)
    if device is None:
        raise CrudError(f"device {device_id!r} not found", status=404)
    if "status" in changes and changes["status"] not in ("active", "revoked"):
        raise CrudError(f"status must be 'active' or 'revoked', but got {changes['status']!r}")
    override = changes.get("duration_override_seconds")
    if override is not None and not 1 <= override <= MAX_LICENCE_SECONDS:
        raise CrudError(
            f"duration_override_seconds must be in [1, {MAX_LICENCE_SECONDS}] (100 years) or "
            f"null, but got {override}"
        )
    for key, value in changes.items():
        setattr(device, key, value)
    action = "device.revoke" if changes.get("status") == "revoked" else "device.update"
    audit(session, actor, action, f"device:{device_id}", dict(changes))
    return device


def count_devices(session: Session, customer_id: int) -> tuple[int, int]:
    """The customer's registered devices: (all, of them revoked). A revoked device keeps its
    slot under ``max_devices``: otherwise its holder could register a fresh identity in it."""
    rows = session.execute(
        select(Device.status, func.count())
        .where(Device.customer_id == customer_id)
        .group_by(Device.status)
    ).all()
    counts = {status: int(n) for status, n in rows}
    return sum(counts.values()), counts.get("revoked", 0)


# -- licences and usage --------------------------------------------------------------------------


def valid_application_licences(session: Session, application: Application, now: dt.datetime) -> int:
    """How many of the application's licences are valid at ``now``."""
    stmt = select(func.count()).where(
        Licence.application_id == application.id, Licence.expires_at > now
    )
    return int(session.scalar(stmt) or 0)


def kek_warning(
    session: Session, application: Application, previous: bytes | None, now: dt.datetime
) -> str | None:
    """What to tell the admin who just replaced ``previous``, another KEK, with the
    application's (``sklicense app import-kek``, ``PUT /v1/admin/applications/{name}/kek``):
    the model files protected under the old one do not open with the licences issued from
    now on; None when there was none or it is the same."""
    if previous is None or previous == application.kek:
        return None
    valid = valid_application_licences(session, application, now)
    return (
        f"this KEK replaces another one: the licences of {application.name!r} issued from now "
        "on carry it, and a device whose model files were protected under the old one cannot "
        f"open them with such a licence ({valid} licence(s) issued with the old KEK are still "
        "valid). Check that this is the file `skprotect export-kek` wrote where the models "
        "were protected; the old KEK is not kept (import its file again to undo)"
    )


def issued_licences(session: Session) -> tuple[int, dt.datetime | None]:
    """How many licences the database holds, and when the latest was issued."""
    count, latest = session.execute(select(func.count(), func.max(Licence.issued_at))).one()
    return int(count), latest


def list_licences(
    session: Session,
    customer_id: int | None = None,
    device_id: str | None = None,
    limit: int | None = None,
    offset: int = 0,
) -> list[Licence]:
    stmt = select(Licence).order_by(Licence.issued_at.desc(), Licence.id)
    if customer_id is not None:
        stmt = stmt.where(Licence.customer_id == customer_id)
    if device_id is not None:
        stmt = stmt.where(Licence.device_id == device_id)
    return list(session.scalars(paged(stmt, limit, offset)))


def list_usage(
    session: Session, customer_id: int | None = None, limit: int | None = None, offset: int = 0
) -> list[UsageReport]:
    stmt = select(UsageReport).order_by(UsageReport.id)
    if customer_id is not None:
        stmt = stmt.join(Licence, Licence.id == UsageReport.licence_id).where(
            Licence.customer_id == customer_id
        )
    return list(session.scalars(paged(stmt, limit, offset)))


def usage_summary(
    session: Session,
    customer_id: int | None = None,
    limit: int | None = None,
    offset: int = 0,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
) -> list[dict[str, Any]]:
    """Per licence: the latest reported counter (counters are totals per licence), its
    allowance, and whether the device reported more than the allowance it was granted.

    With a period (``since`` and/or ``until``, timezone-aware: reports received at or after
    ``since`` and before ``until``), the licences with a report received in it, each with the
    counter as reported by ``until`` (``counter``), the counter reported before ``since``
    (``counter_at_start``, 0 when none) and their difference, ``used``: what the device
    reported running in the period. Periods that follow one another (``until`` of one the
    ``since`` of the next) add up to the totals, each report counted in the period that
    received it."""
    for name, value in (("since", since), ("until", until)):
        if value is not None and value.tzinfo is None:
            raise CrudError(f"{name} must include a timezone, but got {value.isoformat()}")
    if since is not None and until is not None and until <= since:
        raise CrudError(f"until ({until.isoformat()}) must be after since ({since.isoformat()})")
    before = (
        func.max(case((UsageReport.received_at < since, UsageReport.counter)))
        if since is not None
        else literal(0)
    )
    stmt = (
        select(
            Licence.customer_id,
            UsageReport.device_id,
            UsageReport.licence_id,
            func.max(UsageReport.counter),
            Licence.inferences,
            before,
        )
        .join(Licence, Licence.id == UsageReport.licence_id)
        .group_by(Licence.customer_id, UsageReport.device_id, UsageReport.licence_id)
        .group_by(Licence.inferences)
        .order_by(Licence.customer_id, UsageReport.device_id, UsageReport.licence_id)
    )
    if customer_id is not None:
        stmt = stmt.where(Licence.customer_id == customer_id)
    if until is not None:
        stmt = stmt.where(UsageReport.received_at < until)
    if since is not None:
        stmt = stmt.having(func.max(UsageReport.received_at) >= since)
    period = since is not None or until is not None
    rows = []
    for c, d, lic, counter, allowance, start in session.execute(paged(stmt, limit, offset)):
        row = {
            "customer_id": c,
            "device_id": d,
            "licence_id": lic,
            "counter": int(counter),
            "allowance": allowance,
            # a device that counted past its allowance: a modified runtime (clones never do)
            "over_allowance": allowance is not None and int(counter) > allowance,
        }
        if period:
            start = 0 if start is None else int(start)
            row |= {"counter_at_start": start, "used": int(counter) - start}
        rows.append(row)
    return rows
