"""A SQLite ``--database-url`` naming a folder: ``db upgrade`` and ``init`` failed with
SQLite's "unable to open database file" (or a traceback, without the CLI's handler), and every
other command said the folder "does not exist" and to create it with ``sklicense init``, which
then failed. Each says it is a folder, and what to name instead."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from sklicense import db
from sklicense.api.main import create_app
from sklicense.cli import app as cli
from sklicense.settings import Settings


def message(folder: Path) -> str:
    return (
        f"The database path {folder} is a folder, not a database file: name a file in it "
        f"(--database-url or SKLICENSE_DATABASE_URL), e.g. sqlite:///{folder / 'sklicense.db'}."
    )


@pytest.mark.parametrize(
    "command",
    [["db", "upgrade"], ["init"], ["customer", "list"], ["audit"], ["serve"]],
    ids=lambda c: " ".join(c),
)
def test_a_folder_is_not_a_database_file(tmp_path: Path, command: list[str]) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    args = [*command, "--database-url", f"sqlite:///{folder}"]
    if command[0] in ("init", "serve"):
        args += ["--state-dir", str(tmp_path / "state")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1
    assert result.output.splitlines()[-1] == f"Error: {message(folder)}"
    assert list(folder.iterdir()) == []


def test_the_server_refuses_a_folder(tmp_path: Path) -> None:
    with pytest.raises(db.DatabaseNotMigratedError) as refused:
        create_app(Settings(database_url=f"sqlite:///{tmp_path}", state_dir=tmp_path))
    assert str(refused.value) == message(tmp_path)
