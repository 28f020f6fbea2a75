"""What the admin CLI prints, followed as docs/licensing.md's quick start writes it."""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from sklicense.cli import app as cli

PUBLIC_KEY = base64.b64encode(bytes(range(32))).decode()


def invoke(database_url: str, *args: str) -> Any:
    return CliRunner().invoke(cli, [*args, "--database-url", database_url])


def test_token_list_writes_times_in_iso_8601(database_url) -> None:
    """``token list`` wrote ``"2026-12-06 09:57:50.843118+00:00"`` (``str`` of a datetime)
    where every other listing, and ``GET /v1/admin/tokens``, write ISO 8601 with a ``T``."""
    assert invoke(database_url, "token", "create", "--expires-days", "2").exit_code == 0
    listed = invoke(database_url, "token", "list")
    assert listed.exit_code == 0, listed.output
    [row] = json.loads(listed.output)
    for field in ("created_at", "expires_at"):
        assert "T" in row[field] and " " not in row[field], row
        assert dt.datetime.fromisoformat(row[field]).utcoffset() == dt.timedelta(0)


def test_app_create_says_what_it_registered(database_url, tmp_path: Path) -> None:
    """``app create --kek-file ... --public-key ...`` printed "with its KEK" only: the user
    could not tell that the public key (the customer binding) was registered too."""
    kek = tmp_path / "kek.b64"
    kek.write_text(base64.b64encode(bytes(32)).decode())
    both = invoke(
        database_url, "app", "create", "a1", "--kek-file", str(kek), "--public-key", PUBLIC_KEY
    )
    assert both.exit_code == 0, both.output
    assert both.stdout == "Created application 'a1' with its KEK and public key\n"
    key_only = invoke(database_url, "app", "create", "a2", "--public-key", PUBLIC_KEY)
    assert key_only.stdout == "Created application 'a2' with its public key\n"
    bare = invoke(database_url, "app", "create", "a3")
    assert bare.stdout == "Created application 'a3'\n"
    assert "has no public key" in bare.stderr
