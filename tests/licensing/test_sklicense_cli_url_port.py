"""A database URL whose port is not a number (``HOST:abc``) is one ``Error:`` line naming the
option, before any work: SQLAlchemy's ``ValueError`` went past the URL check as typer's
traceback, and ``init`` had no word for it. URLs SQLAlchemy accepts stay accepted."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from sklicense.cli import _database_url_problem, app

EXAMPLE = "sqlite:////var/lib/sklicense/sklicense.db or postgresql://USER@HOST/DATABASE."


@pytest.mark.parametrize("command", [["init", "--state-dir", "state"], ["db", "upgrade"]])
def test_a_port_that_is_not_a_number_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    for name in ("SKLICENSE_SIGNING_KEY_FILE", "SKLICENSE_STATE_DIR", "SKLICENSE_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.chdir(tmp_path)
    url = "postgresql://admin:s3cret@db:abc/licences"
    result = CliRunner().invoke(app, [*command, "--database-url", url])
    assert (result.exit_code, result.output) == (
        1,
        "Error: --database-url has a port that is not a number (HOST:PORT, e.g. "
        f"localhost:5432); pass a URL such as {EXAMPLE}\n",
    )
    assert list(tmp_path.iterdir()) == []  # no signing key, no database file


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://u@h/db",
        "postgresql://u:pa/ss@h:5432/db?sslmode=require",
        "sqlite:///relative.db",
        "sqlite:///x.db?timeout=5",
        "sqlite+pysqlite:////abs/x.db",
    ],
)
def test_urls_sqlalchemy_takes_pass_the_check(url: str) -> None:
    assert _database_url_problem(url) is None
