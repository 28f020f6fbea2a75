"""``sklicense app import-kek`` replacing an application's KEK with another one (a file
exported where other models were protected): before, it said only "Imported the KEK", and
every device whose model files were protected under the old KEK was then charged for
licences whose KEK cannot open them. Now it warns, saying how many licences of the old KEK
are valid and how to undo it; importing the same KEK again says nothing more."""

from __future__ import annotations

import base64
import time
from pathlib import Path

from tests.licensing.server_helpers import FakeDevice, make_application, make_customer, random_kek
from typer.testing import CliRunner

from sklicense.cli import app as cli


def import_kek(database_url: str, kek: bytes, tmp_path: Path) -> str:
    path = tmp_path / "kek.b64"
    path.write_text(base64.b64encode(kek).decode() + "\n")
    result = CliRunner().invoke(
        cli,
        ["app", "import-kek", "demo-app", "--kek-file", str(path), "--database-url", database_url],
    )
    assert result.exit_code == 0, result.output
    assert "Imported the KEK of application 'demo-app'" in result.stdout
    return result.stderr


def test_another_kek_is_warned_about(client, sessions, clock, database_url, tmp_path) -> None:
    old = random_kek()
    make_application(sessions, kek=old)
    make_customer(sessions)
    device = FakeDevice()
    clock.now = int(time.time())  # the CLI counts the licences valid now
    body = device.licence_request(42, clock.now, requested_inferences=1)
    assert client.post("/v1/licences", json=body, headers=device.headers(body)).is_success

    assert import_kek(database_url, old, tmp_path) == ""  # the same KEK again
    warning = import_kek(database_url, random_kek(), tmp_path)
    assert "Warning: this KEK replaces another one" in warning
    assert "(1 licence(s) issued with the old KEK are still valid)" in warning
