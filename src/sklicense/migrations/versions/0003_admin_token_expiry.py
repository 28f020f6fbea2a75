"""Admin tokens get an optional expiry (``sklicense token create --expires-days``), and on
SQLite ids that are never reused (``AUTOINCREMENT``): a revoked token's id given to the next
token made audit entries and a later ``token revoke`` ambiguous. Downgrading deletes the
tokens that have an expiry: without the column they would be valid until revoked.

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
        # the ids of tokens revoked before this upgrade, above the highest kept, are in the
        # audit log only: AUTOINCREMENT must not give them out again
        bind = op.get_bind()
        targets = bind.execute(sa.text("SELECT target FROM audit_log WHERE target LIKE 'token:%'"))
        named = [int(t[6:]) for (t,) in targets if t[6:].isdecimal()]
        if named:
            bind.execute(sa.text("DELETE FROM sqlite_sequence WHERE name = 'admin_tokens'"))
            highest = max(
                [*named, bind.execute(sa.text("SELECT max(id) FROM admin_tokens")).scalar() or 0]
            )
            bind.execute(
                sa.text("INSERT INTO sqlite_sequence (name, seq) VALUES ('admin_tokens', :seq)"),
                {"seq": highest},
            )


def downgrade() -> None:
    # 0002 has no expiry: a token made to expire would stay valid until revoked
    op.execute("DELETE FROM admin_tokens WHERE expires_at IS NOT NULL")
    if op.get_bind().dialect.name == "sqlite":  # in place (SQLite 3.35 and later), as in 0002
        op.execute("ALTER TABLE admin_tokens DROP COLUMN expires_at")
    else:
        op.drop_column("admin_tokens", "expires_at")
