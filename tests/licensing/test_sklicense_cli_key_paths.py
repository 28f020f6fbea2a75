"""``--state-dir`` naming the folder of the very key ``SKLICENSE_SIGNING_KEY_FILE`` names is
not refused (a service unit that passed both started before), and ``init`` over a dangling
link names the link, instead of telling ``init`` to run ``sklicense init``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sklicense.cli import app, settings_for


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SKLICENSE_SIGNING_KEY_FILE", "SKLICENSE_STATE_DIR", "SKLICENSE_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)


def test_state_dir_of_the_same_key_file_is_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SKLICENSE_SIGNING_KEY_FILE", str(tmp_path / "state" / "server.key"))
    settings = settings_for(None, tmp_path / "state")
    assert settings.key_path == tmp_path / "state" / "server.key"


def test_init_over_a_dangling_link_names_the_link(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    os.symlink(tmp_path / "gone.key", state / "server.key")
    url = f"sqlite:///{tmp_path / 'sklicense.db'}"
    result = CliRunner().invoke(app, ["init", "--state-dir", str(state), "--database-url", url])
    assert result.exit_code == 1
    assert "symbolic link" in result.output
    assert "Run `sklicense init`" not in result.output
