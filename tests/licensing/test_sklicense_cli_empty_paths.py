"""An empty ``--state-dir`` or ``--kek-file`` (a shell variable left unset) is refused by name,
as ``skprotect run`` refuses its empty paths: typer reads ``''`` as ``.``, so ``init
--state-dir ''`` wrote the server signing key into the current folder, and ``--kek-file ''``
said ``--kek-file . cannot be read``, a path nobody gave."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from sklicense.cli import app


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("SKLICENSE_SIGNING_KEY_FILE", "SKLICENSE_STATE_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SKLICENSE_DATABASE_URL", f"sqlite:///{tmp_path / 'sklicense.db'}")
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("command", [["init"], ["serve"]])
def test_an_empty_state_dir_is_refused(here: Path, command: list[str]) -> None:
    result = CliRunner().invoke(app, [*command, "--state-dir", ""])
    assert (result.exit_code, result.output) == (
        1,
        "Error: --state-dir: the path is empty (or '.'); pass a folder.\n",
    )
    assert list(here.iterdir()) == []  # no server.key here


@pytest.mark.parametrize(
    "command", [["app", "create", "a1"], ["app", "import-kek", "a1"]], ids=["create", "import"]
)
def test_an_empty_kek_file_is_refused(here: Path, command: list[str]) -> None:
    result = CliRunner().invoke(app, [*command, "--kek-file", ""])
    assert (result.exit_code, result.output) == (
        1,
        "Error: --kek-file: the path is empty (or '.'); pass a file name.\n",
    )
