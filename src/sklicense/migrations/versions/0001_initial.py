"""Initial schema: applications, customers, devices, licences, usage, nonces, rates, tokens, audit.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "applications",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("kek", sa.LargeBinary, nullable=True),
        sa.Column("models", sa.JSON, nullable=True),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_table(
        "customers",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("contract_end", TS, nullable=True),
        sa.Column("default_licence_seconds", sa.BigInteger, nullable=False),
        sa.Column("max_devices", sa.Integer, nullable=False),
        sa.Column("inference_quota", sa.BigInteger, nullable=True),
        sa.Column("inferences_granted", sa.BigInteger, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.CheckConstraint(
            "contract_end IS NOT NULL OR inference_quota IS NOT NULL", name="ck_customers_policy"
        ),
        sa.CheckConstraint("max_devices >= 1", name="ck_customers_max_devices"),
        sa.CheckConstraint("default_licence_seconds >= 1", name="ck_customers_duration"),
        sa.CheckConstraint(
            "inference_quota IS NULL OR inference_quota >= 0", name="ck_customers_quota"
        ),
        sa.CheckConstraint("inferences_granted >= 0", name="ck_customers_granted"),
    )
    op.create_table(
        "devices",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("customer_id", sa.BigInteger, sa.ForeignKey("customers.id"), nullable=False),
        sa.Column("signing_public_key", sa.String(100), nullable=False),
        sa.Column("exchange_public_key", sa.String(100), nullable=False),
        sa.Column("duration_override_seconds", sa.BigInteger, nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.CheckConstraint("status IN ('active', 'revoked')", name="ck_devices_status"),
        sa.CheckConstraint(
            "duration_override_seconds IS NULL OR duration_override_seconds >= 1",
            name="ck_devices_duration",
        ),
    )
    op.create_index("ix_devices_customer_id", "devices", ["customer_id"])
    op.create_table(
        "licences",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("device_id", sa.String(200), sa.ForeignKey("devices.id"), nullable=False),
        sa.Column("customer_id", sa.BigInteger, sa.ForeignKey("customers.id"), nullable=False),
        sa.Column("application_id", sa.Integer, sa.ForeignKey("applications.id"), nullable=False),
        sa.Column("models", sa.JSON, nullable=False),
        sa.Column("issued_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("inferences", sa.BigInteger, nullable=True),
        sa.Column("request_nonce", sa.String(64), nullable=False),
    )
    op.create_index("ix_licences_device_id", "licences", ["device_id"])
    op.create_index("ix_licences_customer_id", "licences", ["customer_id"])
    op.create_table(
        "usage_reports",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("device_id", sa.String(200), sa.ForeignKey("devices.id"), nullable=False),
        sa.Column("report_id", sa.String(100), nullable=False),
        sa.Column("licence_id", sa.String(36), sa.ForeignKey("licences.id"), nullable=False),
        sa.Column("counter", sa.BigInteger, nullable=False),
        sa.Column("received_at", TS, nullable=False),
        sa.UniqueConstraint("device_id", "report_id", name="uq_usage_device_report"),
    )
    op.create_index("ix_usage_reports_licence_id", "usage_reports", ["licence_id"])
    op.create_table(
        "seen_nonces",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("device_id", sa.String(200), nullable=False),
        sa.Column("nonce", sa.String(64), nullable=False),
        sa.Column("seen_at", TS, nullable=False),
        sa.UniqueConstraint("device_id", "nonce", name="uq_nonce_device_nonce"),
    )
    op.create_table(
        "rate_counters",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("key", sa.String(300), nullable=False),
        sa.Column("window_start", sa.BigInteger, nullable=False),
        sa.Column("count", sa.Integer, nullable=False),
        sa.UniqueConstraint("key", "window_start", name="uq_rate_key_window"),
    )
    op.create_table(
        "admin_tokens",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("token_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.CheckConstraint("role IN ('admin', 'read-only')", name="ck_tokens_role"),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", TS, nullable=False),
        sa.Column("actor", sa.String(300), nullable=False),
        sa.Column("action", sa.String(100), nullable=False),
        sa.Column("target", sa.String(300), nullable=False),
        sa.Column("detail", sa.JSON, nullable=False),
    )
    op.create_index("ix_audit_log_at", "audit_log", ["at"])


def downgrade() -> None:
    for table in (
        "audit_log",
        "admin_tokens",
        "rate_counters",
        "seen_nonces",
        "usage_reports",
        "licences",
        "devices",
        "customers",
        "applications",
    ):
        op.drop_table(table)
