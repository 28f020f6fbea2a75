"""``sklicense init`` creating a signing key for a database that already issued licences (the
key file lost, or deleted by mistake): before, it said only "Created signing key", and the
server then charged each device's next licence request for a licence that the device, pinning
the old key, refused. Now it warns, saying to restore the old key or how to rotate."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from tests.licensing.server_helpers import Clock, FakeDevice, make_application, make_customer
from typer.testing import CliRunner

from sklicense import db
from sklicense.api.main import create_app
from sklicense.cli import app as cli
from sklicense.settings import Settings


def init(where: list[str]) -> str:
    result = CliRunner().invoke(cli, ["init", *where])
    assert result.exit_code == 0, result.output
    return result.stderr


def test_a_new_key_for_a_database_with_licences_is_warned_about(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("SKLICENSE_SIGNING_KEY_FILE", "SKLICENSE_STATE_DIR", "SKLICENSE_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_COLOR", "1")
    url = f"sqlite:///{tmp_path / 'sklicense.db'}"
    where = ["--state-dir", str(tmp_path / "state"), "--database-url", url]
    assert "Warning" not in init(where)  # a new database: nothing was signed
    sessions = db.session_factory(url)
    make_application(sessions)
    make_customer(sessions)
    clock = Clock()
    app = create_app(Settings(database_url=url, state_dir=tmp_path / "state"), clock)
    with TestClient(app) as client:
        device = FakeDevice()
        body = device.licence_request(42, clock.now)
        assert client.post("/v1/licences", json=body, headers=device.headers(body)).is_success
    try:
        assert "Warning" not in init(where)  # the key kept
        (tmp_path / "state" / "server.key").unlink()
        warning = init(where)
    finally:
        db.get_engine(url).dispose()
    assert "Warning: the new signing key" in warning
    assert "already holds 1 licence(s)" in warning and "restore that key" in warning
    # the rotation of docs/licensing.md keeps the URL: the warning says so, not "another URL"
    assert "runtime pinning both keys" in warning and "another URL" not in warning
