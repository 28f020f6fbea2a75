"""SQLAlchemy 2 typed ORM models of the licence server (schema owned by the Alembic migrations)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    TypeDecorator,
    UniqueConstraint,
    event,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive, as UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"datetimes must be timezone-aware, but got {value!r}")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    pass


class Application(Base):
    __tablename__ = "applications"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    kek: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    #: The model names a licence may name; None: any model (no ``unknown_model`` check).
    models: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    #: Base64 Ed25519 key that signs the application's configuration files; when set, a licence
    #: request must carry a configuration it signed for the customer named (customer_not_proven).
    public_key: Mapped[str | None] = mapped_column(String(100), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Customer(Base):
    __tablename__ = "customers"
    __table_args__ = (
        CheckConstraint(
            "contract_end IS NOT NULL OR inference_quota IS NOT NULL",
            name="ck_customers_policy",
        ),
        CheckConstraint("max_devices >= 1", name="ck_customers_max_devices"),
        CheckConstraint("default_licence_seconds >= 1", name="ck_customers_duration"),
        CheckConstraint(
            "inference_quota IS NULL OR inference_quota >= 0", name="ck_customers_quota"
        ),
        CheckConstraint("inferences_granted >= 0", name="ck_customers_granted"),
    )

    # Not autoincrement: the id is the Customer.id the protector writes into the configuration.
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(200))
    contract_end: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    default_licence_seconds: Mapped[int] = mapped_column(BigInteger)
    max_devices: Mapped[int] = mapped_column(Integer)
    inference_quota: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    inferences_granted: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Device(Base):
    __tablename__ = "devices"
    __table_args__ = (
        CheckConstraint("status IN ('active', 'revoked')", name="ck_devices_status"),
        CheckConstraint(
            "duration_override_seconds IS NULL OR duration_override_seconds >= 1",
            name="ck_devices_duration",
        ),
    )

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    signing_public_key: Mapped[str] = mapped_column(String(100))
    exchange_public_key: Mapped[str] = mapped_column(String(100))
    duration_override_seconds: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="active")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Licence(Base):
    __tablename__ = "licences"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), index=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    application_id: Mapped[int] = mapped_column(ForeignKey("applications.id"))
    models: Mapped[list[str]] = mapped_column(JSON)
    issued_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    inferences: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    request_nonce: Mapped[str] = mapped_column(String(64))


class LicenceResend(Base):
    """A licence request answered with a licence granted to an earlier request it
    ``supersedes`` (migration 0005): a later request naming this one (its answer lost too)
    is answered with that licence as well, though it no longer names the request the licence
    was granted to (the runtime names the first and the latest few of a long chain). The
    latest :data:`~sklicense.service.RESENDS_NOTED` of each device are kept."""

    __tablename__ = "licence_resends"
    __table_args__ = (UniqueConstraint("device_id", "nonce", name="uq_resend_device_nonce"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"))
    nonce: Mapped[str] = mapped_column(String(64))
    licence_id: Mapped[str] = mapped_column(ForeignKey("licences.id"))


class UsageReport(Base):
    __tablename__ = "usage_reports"
    __table_args__ = (UniqueConstraint("device_id", "report_id", name="uq_usage_device_report"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"))
    report_id: Mapped[str] = mapped_column(String(100))
    licence_id: Mapped[str] = mapped_column(ForeignKey("licences.id"), index=True)
    counter: Mapped[int] = mapped_column(BigInteger)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class SeenNonce(Base):
    __tablename__ = "seen_nonces"
    __table_args__ = (UniqueConstraint("device_id", "nonce", name="uq_nonce_device_nonce"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(String(200))
    nonce: Mapped[str] = mapped_column(String(64))
    #: Indexed (migration 0004): the nonce prune selects the expired nonces by it.
    seen_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class RateCounter(Base):
    __tablename__ = "rate_counters"
    __table_args__ = (UniqueConstraint("key", "window_start", name="uq_rate_key_window"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(300))
    #: Indexed (migration 0004): ``crud.rate_hit`` deletes the windows older than an hour by it.
    window_start: Mapped[int] = mapped_column(BigInteger, index=True)
    count: Mapped[int] = mapped_column(Integer, default=0)


class AdminToken(Base):
    __tablename__ = "admin_tokens"
    __table_args__ = (
        CheckConstraint("role IN ('admin', 'read-only')", name="ck_tokens_role"),
        {"sqlite_autoincrement": True},  # a revoked token's id is never given to another
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: None: the token is valid until it is revoked.
    expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)


class AuditLog(Base):
    """Append-only: the application never updates or deletes a row (enforced by ORM events)."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(300))
    action: Mapped[str] = mapped_column(String(100))
    target: Mapped[str] = mapped_column(String(300))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class AppendOnlyError(RuntimeError):
    """An attempt to change or delete an audit log entry."""


@event.listens_for(AuditLog, "before_update")
def _refuse_audit_update(mapper: Any, connection: Any, target: AuditLog) -> None:
    raise AppendOnlyError("the audit log is append-only: entries cannot be changed")


@event.listens_for(AuditLog, "before_delete")
def _refuse_audit_delete(mapper: Any, connection: Any, target: AuditLog) -> None:
    raise AppendOnlyError("the audit log is append-only: entries cannot be deleted")
