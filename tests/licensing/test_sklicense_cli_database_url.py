"""A database URL that is no URL, or names no database SQLAlchemy knows, is said as such, by
the option or variable that gave it, before any work: it was "the database refused: Could not
parse SQLAlchemy URL ... Check ... that the server is reachable", advice that did not apply,
and ``init`` had already created the signing key."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from sklicense.cli import app

EXAMPLE = "sqlite:////var/lib/sklicense/sklicense.db or postgresql://USER@HOST/DATABASE."
COMMANDS = [["init", "--state-dir", "state"], ["db", "upgrade"], ["token", "list"]]


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("SKLICENSE_SIGNING_KEY_FILE", "SKLICENSE_STATE_DIR", "SKLICENSE_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_a_url_that_is_no_url_is_refused_by_name(here: Path, command: list[str]) -> None:
    result = CliRunner().invoke(app, [*command, "--database-url", "foo"])
    assert (result.exit_code, result.output) == (
        1,
        "Error: --database-url is not a database URL (DIALECT://...); pass one such as "
        f"{EXAMPLE}\n",
    )
    assert list(here.iterdir()) == []  # no signing key, no database file


def test_the_variable_is_named_and_a_password_not_echoed(
    here: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SKLICENSE_DATABASE_URL", "postgres//admin:s3cret@db/licences")
    result = CliRunner().invoke(app, ["token", "list"])
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: SKLICENSE_DATABASE_URL is not a database URL")
    assert "s3cret" not in result.output


def test_an_unknown_kind_of_database_is_named(here: Path) -> None:
    result = CliRunner().invoke(app, ["token", "list", "--database-url", "mysqll://h/db"])
    assert (result.exit_code, result.output) == (
        1,
        "Error: --database-url names a kind of database that SQLAlchemy does not know, "
        f"'mysqll'; pass a URL such as {EXAMPLE}\n",
    )


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", "sqlite+pysqlite://"])
def test_an_in_memory_database_is_refused(here: Path, url: str) -> None:
    """``db upgrade`` migrated it, said "Database sqlite:// is at revision 0004", and it was
    gone at exit; the admin commands said to run ``db upgrade`` on it."""
    for command in (["db", "upgrade"], ["customer", "list"]):
        result = CliRunner().invoke(app, [*command, "--database-url", url])
        assert (result.exit_code, result.output) == (
            1,
            "Error: --database-url names an in-memory SQLite database, which is gone when the "
            "command ends; name a database file, e.g. sqlite:////var/lib/sklicense/sklicense.db.\n",
        )
