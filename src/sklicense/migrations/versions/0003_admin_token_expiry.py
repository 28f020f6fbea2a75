"""Admin tokens get an optional expiry (``sklicense token create --expires-days``), and on
SQLite ids that are never reused (``AUTOINCREMENT``): a revoked token's id given to the next
token made audit entries and a later ``token revoke`` ambiguous.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("admin_tokens", sa.Column("expires_at", sa.DateTime(timezone=True)))
    if op.get_bind().dialect.name == "sqlite":  # PostgreSQL's sequences never reuse an id
        with op.batch_alter_table(
            "admin_tokens", recreate="always", table_kwargs={"sqlite_autoincrement": True}
        ):
            pass


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":  # in place (SQLite 3.35 and later), as in 0002
        op.execute("ALTER TABLE admin_tokens DROP COLUMN expires_at")
    else:
        op.drop_column("admin_tokens", "expires_at")
