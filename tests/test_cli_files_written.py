"""The ``skprotect`` command line as a user meets it: ``export-kek`` never overwrites a master
secret and says why a path through a file cannot take the key; the quickstart lists every file it
wrote, the configurations and the licensed run's included."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from skprotect_pytorch import Customer, quickstart
from skprotect_pytorch.cli import app
from skprotect_pytorch.errors import StateError
from skprotect_pytorch.protect import SkProtectorPyTorch
from skprotect_pytorch.state import ProtectionState

EF = SkProtectorPyTorch.ExportFormat
EP = SkProtectorPyTorch.ExportPlatform


@pytest.mark.parametrize(
    "given",
    [
        ".skprotect_private/app/master.key",
        "./.skprotect_private/../.skprotect_private/app/master.key",
        ".skprotect_private/other/master.key",
    ],
)
def test_export_kek_never_overwrites_a_master_secret(workdir: Path, given: str) -> None:
    """It used to write the key over the master secret (exit 0): every key of the application
    was lost, and the next protection refused the 45-byte file as corrupted."""
    ProtectionState.open("app")
    ProtectionState.open("other")
    secrets = {p: p.read_bytes() for p in workdir.glob(".skprotect_private/*/master.key")}
    result = CliRunner().invoke(app, ["export-kek", given, "--application-name", "app"])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    owner = Path(given).parent.name
    assert result.output == (
        f"error: {Path(given)} is the master secret of application '{owner}': writing the key "
        "there would destroy it. Pass another file name.\n"
    )
    assert {p: p.read_bytes() for p in secrets} == secrets


def test_the_api_never_overwrites_a_master_secret_either(workdir: Path) -> None:
    """``ProtectionState.export_kek`` (the Python API under the command) wrote over it too."""
    state = ProtectionState.open("app")
    master = workdir / ".skprotect_private" / "app" / "master.key"
    secret = master.read_bytes()
    with pytest.raises(StateError, match="is the master secret of application 'app'"):
        state.export_kek(master)
    assert master.read_bytes() == secret
    assert state.export_kek(workdir / "kek.b64").read_bytes().strip()  # elsewhere: written


def test_export_kek_names_the_file_in_the_way(workdir: Path) -> None:
    """A path through a file said only "Could not write ...: File exists"."""
    ProtectionState.open("app")
    (workdir / "notes").write_text("mine")
    for given in ("notes/kek.b64", "notes/sub/kek.b64"):
        result = CliRunner().invoke(app, ["export-kek", given, "--application-name", "app"])
        assert result.exit_code == 1, result.output
        assert result.output == "error: notes is a file, not a folder; pass a path in a folder.\n"
    assert (workdir / "notes").read_text() == "mine"
    result = CliRunner().invoke(app, ["export-kek", "new/kek.b64", "--application-name", "app"])
    assert result.exit_code == 0, result.output  # a missing folder is created, as documented
    assert (workdir / "new" / "kek.b64").is_file()


def test_quickstart_lists_every_file_it_wrote(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The list left out both configurations and the licensed run's files: 7 of the 11 files
    the quickstart writes under outputs/ on a machine without CUDA."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x = [torch.randn(2, 6)]

    def small_run(workdir: Path | None = None, *, licensed: bool = True):
        txt = SkProtectorPyTorch(application_name="qs")
        result = txt.protect_new_model(model, "m", x, model_export_formats=EF.ONNX)
        linux = SkProtectorPyTorch(application_name="qs_licensed").protect_new_model(
            model,
            "m",
            x,
            model_export_formats=EF.ONNX,
            deployment_platform=EP.LINUX,
            customer=Customer(5, "Five"),
        )
        run = quickstart.LicensedRun(
            accuracy=1.0,
            licence_id="id",
            issued_at=0,
            expires_at=86400,
            allowance=100,
            used=1,
            server_url="http://127.0.0.1:1",
            seconds=0.1,
            files=quickstart.written(linux),
        )
        return 1.0, [], result, run

    monkeypatch.setattr(quickstart, "run_quickstart", small_run)
    monkeypatch.setenv("COLUMNS", "500")  # one path per line
    result = CliRunner().invoke(app, ["quickstart"])
    assert result.exit_code == 0, result.output
    listed = {Path(line.strip()) for line in result.output.splitlines() if line.startswith("  /")}
    on_disk = {p for p in (workdir / "outputs").rglob("*") if p.is_file()}
    assert listed == on_disk
    assert f"files written: 4 under {workdir / 'outputs' / 'qs'}\n" in result.output
    assert f"files written: 3 under {workdir / 'outputs' / 'qs_licensed'}\n" in result.output
