"""What PostgreSQL refuses is said with PostgreSQL's advice: a database that does not exist is
to be created first (``db upgrade`` creates tables, not databases), and no refusal of PostgreSQL
is told to check "that the database file and its folder are writable" (SQLite's advice, which
every refusal got before)."""

from __future__ import annotations

import secrets
import shlex
import sys
from urllib.parse import quote

import pytest
from tests.licensing.conftest import PG_MAINTENANCE_URL

from sklicense import cli

BASE = PG_MAINTENANCE_URL.rsplit("/", 1)[0]


def sklicense_error(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str):
    """The exit code and standard error of ``sklicense ARGS`` run through :func:`cli.main`."""
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setattr(sys, "argv", ["sklicense", *args])
    with pytest.raises(SystemExit) as stop:
        cli.main()
    return stop.value.code, capsys.readouterr().err


@pytest.mark.parametrize("command", [["db", "upgrade"], ["customer", "list"]], ids=" ".join)
def test_a_missing_database_is_to_be_created_first(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, command: list[str]
) -> None:
    name = f"sklicense_absent_{secrets.token_hex(6)}"
    code, err = sklicense_error(monkeypatch, capsys, *command, "--database-url", f"{BASE}/{name}")
    assert code == 1
    assert f'database "{name}" does not exist' in err
    assert f'create the database first (createdb {name}, or CREATE DATABASE "{name}"' in err
    assert "database file" not in err


def test_the_advice_for_a_missing_database_quotes_its_name(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A name with a space, ';' or '"' was given bare: `createdb my db;x` creates "my" (with
    the comment "db") and runs x, and CREATE DATABASE "a"b" is a syntax error."""
    name = f'absent {secrets.token_hex(6)};"x'
    url = f"{BASE}/{quote(name)}"
    code, err = sklicense_error(monkeypatch, capsys, "customer", "list", "--database-url", url)
    assert code == 1
    assert f"(createdb {shlex.quote(name)}, or CREATE DATABASE " in err
    assert f'CREATE DATABASE "{name.replace(chr(34), 2 * chr(34))}" in psql' in err


def test_a_missing_postgresql_user_gets_no_sqlite_advice(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    user = f"absent_{secrets.token_hex(6)}"
    url = f"postgresql://{user}@{BASE.split('@', 1)[1]}/postgres"
    code, err = sklicense_error(monkeypatch, capsys, "token", "list", "--database-url", url)
    assert code == 1
    assert f'role "{user}" does not exist' in err
    assert err.rstrip().endswith("its user, password and database exist.")
    assert "database file" not in err
