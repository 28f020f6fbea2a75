"""The ``skprotect`` command line: quickstart and export-kek."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from skprotect_pytorch.cli import app
from skprotect_pytorch.quickstart import run_quickstart
from skprotect_pytorch.state import ProtectionState


def test_export_kek(workdir: Path) -> None:
    result = CliRunner().invoke(app, ["export-kek", "kek.b64", "--application-name", "app"])
    assert result.exit_code == 0, result.output
    written = (workdir / "kek.b64").read_text().strip()
    assert base64.b64decode(written) == ProtectionState.open("app").kek
    assert stat.S_IMODE((workdir / "kek.b64").stat().st_mode) == 0o600


def test_export_kek_refuses_outputs_folder(workdir: Path) -> None:
    (workdir / "outputs").mkdir()
    result = CliRunner().invoke(app, ["export-kek", "outputs/kek.b64"])
    assert result.exit_code == 1
    assert "error:" in result.output


@pytest.mark.slow
def test_quickstart_accuracy_table(workdir: Path) -> None:
    original, rows, _, licensed = run_quickstart()
    assert original > 0.9
    # the licensing path: LINUX, embedded server, key released by the licence
    assert licensed is not None
    assert licensed.accuracy == original
    assert licensed.used == 1 and licensed.allowance == 100
    assert licensed.expires_at - licensed.issued_at == 30 * 86400
    assert {row.format for row in rows} >= {"onnx", "torchscript_cpu", "inductor_cpu"}
    for row in rows:
        assert abs(row.accuracy_with_key - original) <= 0.005, row
        assert row.accuracy_without_key <= 0.2, row  # chance is 0.10 on ten balanced classes
        assert row.accuracy_random_key <= 0.2, row  # mean of 8 random keys
        assert row.key_length > 0
    # a second run replaces the model instead of failing on the existing name
    original_again, rows_again, _, licensed_again = run_quickstart()
    assert original_again == original
    assert licensed_again is not None and licensed_again.accuracy == original
    assert [r.accuracy_with_key for r in rows_again] == [r.accuracy_with_key for r in rows]
