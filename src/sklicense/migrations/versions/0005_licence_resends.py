"""``licence_resends``: the licence requests answered with a licence granted to an earlier
request they ``supersedes``, so that a later request naming one of them is answered with that
licence too. The runtime names the first and the latest few requests of a long chain of lost
answers: when the first was denied and a later one granted, the granted one dropped out of
the chain, and the next request was charged a second licence.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "licence_resends",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("device_id", sa.String(200), sa.ForeignKey("devices.id"), nullable=False),
        sa.Column("nonce", sa.String(64), nullable=False),
        sa.Column("licence_id", sa.String(36), sa.ForeignKey("licences.id"), nullable=False),
        sa.UniqueConstraint("device_id", "nonce", name="uq_resend_device_nonce"),
    )


def downgrade() -> None:
    op.drop_table("licence_resends")
