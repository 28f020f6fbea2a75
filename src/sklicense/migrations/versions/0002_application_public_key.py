"""Applications get the public key that signs their configuration files (customer binding).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("applications") as batch:
        batch.add_column(sa.Column("public_key", sa.String(100), nullable=True))


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # not batch mode: it copies the table and drops the old one, which the foreign keys of
        # the licences refuse (SQLite 3.35 and later drop a column in place)
        op.execute("ALTER TABLE applications DROP COLUMN public_key")
    else:
        op.drop_column("applications", "public_key")
