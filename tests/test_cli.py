"""The ``skprotect`` command line: quickstart, export-kek and scan."""

from __future__ import annotations

import base64
import shlex
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from typer.testing import CliRunner

from skprotect_pytorch.cli import app
from skprotect_pytorch.errors import StateError
from skprotect_pytorch.protect import SkProtectorPyTorch
from skprotect_pytorch.quickstart import run_quickstart
from skprotect_pytorch.state import ProtectionState


def test_export_kek(workdir: Path) -> None:
    ProtectionState.open("app")  # what the application's first protection creates
    result = CliRunner().invoke(app, ["export-kek", "kek.b64", "--application-name", "app"])
    assert result.exit_code == 0, result.output
    written = (workdir / "kek.b64").read_text().strip()
    assert base64.b64decode(written) == ProtectionState.open("app").kek
    assert stat.S_IMODE((workdir / "kek.b64").stat().st_mode) == 0o600
    public_key = base64.b64encode(ProtectionState.open("app").public_key_bytes).decode()
    assert f"public key of 'app': {public_key}\n" in result.output
    assert f"sklicense app create app --kek-file kek.b64 --public-key {public_key}" in result.output


def test_export_kek_prints_a_registration_line_to_paste(workdir: Path) -> None:
    """A KEK file whose name holds a space was printed unquoted in the ``sklicense app create``
    line, which then named two files."""
    ProtectionState.open("app")
    result = CliRunner().invoke(app, ["export-kek", "my kek.b64", "--application-name", "app"])
    assert result.exit_code == 0, result.output
    line = result.output.splitlines()[-1].removeprefix("register both: ")
    public_key = base64.b64encode(ProtectionState.open("app").public_key_bytes).decode()
    assert shlex.split(line) == [
        "sklicense", "app", "create", "app", "--kek-file", "my kek.b64", "--public-key", public_key
    ]  # fmt: skip


def test_export_kek_refuses_an_application_without_master_secret(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A typo in the name, or another folder than the protection's, would create a new master
    secret and export a KEK that unlocks none of the application's key files."""
    ProtectionState.open("my_app")
    result = CliRunner().invoke(app, ["export-kek", "kek.b64", "--application-name", "my-app"])
    assert result.exit_code == 1
    assert "application 'my-app' has no master secret (" in result.output
    assert not (workdir / ".skprotect_private" / "my-app").exists()
    assert not (workdir / "kek.b64").exists()
    other = workdir / "elsewhere"
    other.mkdir()
    monkeypatch.chdir(other)
    result = CliRunner().invoke(app, ["export-kek", "kek.b64", "--application-name", "my_app"])
    assert result.exit_code == 1 and "Run this from the folder" in result.output
    assert not (other / ".skprotect_private").exists()
    monkeypatch.setenv("SKPROTECT_STATE_DIR", str(workdir / ".skprotect_private"))
    result = CliRunner().invoke(app, ["export-kek", "kek.b64", "--application-name", "my_app"])
    assert result.exit_code == 0, result.output
    assert base64.b64decode((other / "kek.b64").read_text()) == ProtectionState.open("my_app").kek


def test_export_kek_refuses_a_folder(workdir: Path) -> None:
    ProtectionState.open("default_app")
    for path in ("", "."):
        result = CliRunner().invoke(app, ["export-kek", path])
        assert result.exit_code == 1
        assert "error: . is a folder; pass a file name for the key." in result.output


def test_export_kek_refuses_outputs_folder(workdir: Path) -> None:
    ProtectionState.open("default_app")
    (workdir / "outputs").mkdir()
    result = CliRunner().invoke(app, ["export-kek", "outputs/kek.b64"])
    assert result.exit_code == 1
    assert "inside an 'outputs' folder" in result.output
    assert not (workdir / "outputs" / "kek.b64").exists()


def test_quickstart_skips_the_licensed_run_without_the_licence_extra(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a ``skprotect[protect]`` install the licensed run would end the quickstart with a
    traceback after minutes of protection: it is skipped up front, and the output says why."""
    import sys
    from types import SimpleNamespace

    from skprotect_pytorch import quickstart

    monkeypatch.setitem(sys.modules, "sqlalchemy", None)  # import fails, find_spec gives None
    asked = []

    def protected_only(workdir: Path | None = None, *, licensed: bool = True):
        asked.append(licensed)
        result = SimpleNamespace(
            files=[],
            output_dir=Path("outputs"),
            config_path=Path("outputs/skconfig.json"),
            skipped_formats={},
        )
        return 0.99, [], result, None

    monkeypatch.setattr(quickstart, "run_quickstart", protected_only)
    result = CliRunner().invoke(app, ["quickstart"])
    assert result.exit_code == 0, result.output
    assert asked == [False]
    assert "skipped the licensed run: sqlalchemy not installed" in result.output
    assert "pip install 'skprotect[licence]'" in result.output


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
        assert row.weights_in_file == 0, row  # skprotect scan's search finds none of them
    # a second run replaces the model instead of failing on the existing name
    original_again, rows_again, _, licensed_again = run_quickstart()
    assert original_again == original
    assert licensed_again is not None and licensed_again.accuracy == original
    assert [r.accuracy_with_key for r in rows_again] == [r.accuracy_with_key for r in rows]


class _ScanNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def test_scan_finds_plaintext_weights_only_where_they_are(workdir: Path) -> None:
    torch.manual_seed(0)
    model = _ScanNet().eval()
    torch.save(model.state_dict(), "net_state.pt")
    protector = SkProtectorPyTorch(application_name="app")
    inputs = [torch.randn(1, 3, 4, 4)]
    formats = SkProtectorPyTorch.ExportFormat.ONNX | SkProtectorPyTorch.ExportFormat.TORCHSCRIPT_CPU
    full = protector.protect_new_model(
        model, "net", inputs, model_export_formats=formats, save_original=True
    )
    locked = [str(r.path) for r in full.formats.values()]
    original_onnx = next(str(p) for p in full.original_files if p.suffix == ".onnx")

    def scan(*args: str):
        return CliRunner().invoke(app, ["scan", *args])

    save_file({k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}, "net.safetensors")
    clean = scan(*locked, "--original", "net_state.pt")
    assert clean.exit_code == 0, clean.output
    assert scan(*locked, "--original", "net.safetensors").exit_code == 0
    assert clean.output.count("no weight of the original found (2 weight tensors") == 2
    assert scan(locked[0], "--original", original_onnx).exit_code == 0
    folder = scan("outputs/app/net", "--original", "net_state.pt")  # original/ left out
    assert folder.exit_code == 0, folder.output
    assert folder.output.count("no weight of the original found") == 2
    assert scan("outputs/app/net/original", "--original", "net_state.pt").exit_code == 1

    leaky = scan(original_onnx, "--original", "net_state.pt")  # the detector does detect
    assert leaky.exit_code == 1
    in_bf16 = scan(original_onnx, "--original", "net.safetensors")  # rounded: cos > 0.999 still
    assert in_bf16.exit_code == 1 and "2 weight(s) of the original found" in in_bf16.output
    assert "2 weight(s) of the original found in plaintext:" in leaky.output
    assert "conv.weight in" in leaky.output and "fc.weight in" in leaky.output

    with pytest.warns(RuntimeWarning, match="stored in plaintext"):
        partial = protector.protect_new_model(
            model, "net2", inputs, layer_filter=lambda name, m: name != "fc"
        )
    found = scan(str(partial.formats["onnx"].path), "--original", "net_state.pt")
    assert found.exit_code == 1
    assert "1 weight(s) of the original found in plaintext" in found.output
    assert "fc.weight in" in found.output and "conv.weight" not in found.output


def test_scan_refuses_what_it_cannot_read(workdir: Path) -> None:
    torch.save({"epoch": 3}, "no_tensors.pt")
    Path("notes.txt").write_text("x")
    Path("model.onnx").write_bytes(b"not onnx")
    for args, message in [
        (["model.onnx", "--original", "missing.pt"], "'missing.pt' does not exist"),
        (["model.onnx", "--original", "notes.txt"], "Cannot read original weights from"),
        (["model.onnx", "--original", "no_tensors.pt"], "holds no tensors by name"),
        (["notes.txt", "--original", "no_tensors.pt"], "holds no tensors by name"),
    ]:
        result = CliRunner().invoke(app, ["scan", *args])
        assert result.exit_code == 2, result.output
        assert message in result.output
    torch.save({"w": torch.randn(16, 16)}, "state.pt")
    Path("empty").mkdir()
    Path("bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    result = CliRunner().invoke(app, ["scan", "model.onnx", "--original", "bad.safetensors"])
    assert result.exit_code == 2 and "not a readable .safetensors file" in result.output
    result = CliRunner().invoke(app, ["scan", "model.onnx", "--original", "empty"])
    assert result.exit_code == 2 and "--original empty is a folder; pass the" in result.output
    for args, message in [
        (["empty"], "empty holds no .onnx, .pt or .pt2 file to scan"),
        (["missing_folder/"], "error: missing_folder does not exist; check the path."),
        (["notes.txt"], "the suffix must be one of"),
        (["model.onnx"], "Cannot read the constants of 'model.onnx' (DecodeError"),
        (["model.onnx", "--threshold", "0"], "--threshold must be in (0, 1], but got 0.0"),
    ]:
        result = CliRunner().invoke(app, ["scan", *args, "--original", "state.pt"])
        assert result.exit_code == 2, result.output
        assert message in result.output


def test_quickstart_refuses_an_unusable_state_folder_before_training(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run from inside an ``outputs`` folder, the quickstart used to train for minutes before
    the protector refused the state folder."""
    from skprotect_pytorch import quickstart

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("trained before checking the state folder")

    monkeypatch.setattr(quickstart, "train", no_training)
    with pytest.raises(StateError, match="inside an 'outputs' folder"):
        run_quickstart(workdir / "outputs" / "inner")
    assert not (workdir / "outputs" / "inner" / ".skprotect_private").exists()


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["quickstart"], 1),
        (["scan", "model.onnx", "--original", "state.pt"], 2),  # 1 would say: a weight found
        (["audit", "--quick"], 2),  # 1 would say: the gate failed
    ],
)
def test_commands_of_the_protector_need_its_extra(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], code: int
) -> None:
    """On a ``skprotect[runtime]`` install these commands said so with a traceback."""
    import sys

    monkeypatch.setitem(sys.modules, "torch", None)  # find_spec gives None, import fails
    result = CliRunner().invoke(app, args)
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit)
    assert f"error: skprotect {args[0]} needs torch, not installed here" in result.output
    assert "pip install 'skprotect[protect]'" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--budgets", "5,5.0"], "error: --budgets lists a budget twice, got '5,5.0'"),
        (["--stored-only"], "error: --stored-only reports what a cells folder holds: pass --cells"),
        (
            ["--json", "report", "--markdown", "./report"],
            "error: --json and --markdown both name report: one report would overwrite the other",
        ),
    ],
)
def test_audit_names_its_own_options_in_errors(
    workdir: Path, args: list[str], message: str
) -> None:
    """These errors used to name AuditConfig's fields (``AuditConfig.budgets``), which the command
    line user never wrote."""
    result = CliRunner().invoke(app, ["audit", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "AuditConfig" not in result.output
