"""Every migration, one at a time, from an empty database to the head and back to nothing, on
SQLite and PostgreSQL: the head schema is exactly what the models declare (a model changed
without a migration fails here), each downgrade leaves the previous revision, and the base
leaves no table but Alembic's."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from tests.licensing.conftest import PG_MAINTENANCE_URL

from sklicense import db
from sklicense.models import Base


@pytest.fixture(params=["sqlite", "postgres"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no table at all, of each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    name = f"sklicense_migrations_{secrets.token_hex(6)}"
    with psycopg.connect(PG_MAINTENANCE_URL, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        url = db.normalise_url(f"{PG_MAINTENANCE_URL.rsplit('/', 1)[0]}/{name}")
        try:
            yield url
        finally:
            db.get_engine(url).dispose()
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def migrate(url: str, direction: str, revision: str) -> None:
    config = db.alembic_config(url)
    with db.get_engine(url).begin() as connection:
        config.attributes["connection"] = connection
        getattr(command, direction)(config, revision)


def test_each_migration_up_and_down(empty_url: str) -> None:
    revisions = [
        s.revision
        for s in ScriptDirectory.from_config(db.alembic_config(empty_url)).walk_revisions()
    ][::-1]
    assert revisions[0] == "0001" and revisions[-1] == db.head_revision()
    for revision in revisions:
        migrate(empty_url, "upgrade", revision)
        assert db.current_revision(empty_url) == revision
    with db.get_engine(empty_url).connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    for revision in [*reversed(revisions[:-1]), "base"]:
        migrate(empty_url, "downgrade", revision)
        assert db.current_revision(empty_url) == (None if revision == "base" else revision)
    assert inspect(db.get_engine(empty_url)).get_table_names() == ["alembic_version"]
    db.upgrade(empty_url)
    db.check_migrated(empty_url)
