"""``skprotect scan`` of a folder names the unlocked copies it leaves out.

A folder is scanned without its ``original/`` folders, where ``save_original=True`` writes the
unlocked model (``<model>/original/<model>_<format>.<suffix>``). Until 2026-12-07
``skprotect scan outputs/app`` of a protection made with ``save_original=True`` printed only "no
weight of the original found" for the locked file and exited 0, as the release check of a
folder that held the original model in plaintext (``outputs/app/m/original/m_onnx.onnx``); it
now warns, naming each copy.

A folder was also scanned without every file below a folder named ``original``: an application
with a model named "original" (a valid name) had its locked files left out, ``skprotect scan
outputs/app`` said "holds no .onnx, .pt or .pt2 file to scan" (exit 2) or, beside another
model, named that model's locked file as an unlocked copy. A copy given to scan as a file as
well was still listed as "not scanned", and a copy under two given folders was listed twice."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from typer.testing import CliRunner

from skprotect_pytorch.cli import app
from skprotect_pytorch.protect import SkProtectorPyTorch


def protected_with_its_original(name: str) -> tuple[Path, Path]:
    """Protect a seeded MLP as ONNX model ``name`` of "app" with ``save_original=True``, its
    weights saved to ``original.pt``; returns the locked file and the unlocked copy."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    torch.save(model.state_dict(), "original.pt")
    SkProtectorPyTorch(application_name="app").protect_new_model(
        model,
        name,
        [torch.randn(2, 16)],
        model_export_formats=SkProtectorPyTorch.ExportFormat.ONNX,
        save_original=True,
    )
    locked = Path("outputs", "app", name, "onnx", f"{name}.onnx")
    copy = Path("outputs", "app", name, "original", f"{name}_onnx.onnx")
    assert locked.is_file() and copy.is_file()
    return locked, copy


def scan(*paths: str):
    return CliRunner().invoke(app, ["scan", *paths, "--original", "original.pt"])


def test_a_scanned_folder_with_unlocked_copies_warns_naming_them(workdir: Path) -> None:
    _, copy = protected_with_its_original("m")
    result = scan("outputs/app")
    assert result.exit_code == 0, result.output  # the locked file holds no weight
    assert "m.onnx: no weight of the original found" in result.stdout
    assert f"warning: not scanned: {copy}: unlocked copy" in result.stderr
    assert "Delete the original/ folder before shipping" in result.stderr
    locked_only = scan("outputs/app/m/onnx")
    assert locked_only.exit_code == 0 and "warning" not in locked_only.stderr


def test_a_model_named_original_is_scanned_and_only_its_copy_is_named(workdir: Path) -> None:
    locked, copy = protected_with_its_original("original")
    result = scan("outputs/app")
    assert result.exit_code == 0, result.output
    assert f"{locked}: no weight of the original found" in result.stdout
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1
    assert warnings[0].startswith(f"warning: not scanned: {copy}: unlocked copy ")
    assert str(locked) not in warnings[0]

    twice = scan("outputs/app", "outputs/app/original")  # the copy once
    assert twice.exit_code == 0, twice.output
    assert twice.stderr.count(str(copy)) == 1

    given = scan("outputs/app", str(copy))  # scanned, as asked: no "not scanned"
    assert given.exit_code == 1, given.output
    assert f"{copy}: 2 weight(s) of the original found in plaintext" in given.stdout
    assert "not scanned" not in given.stderr

    locked.unlink()  # only the copy left: the error says so
    only = scan("outputs/app")
    assert only.exit_code == 2, only.output
    assert "holds no .onnx, .pt or .pt2 file to scan, only unlocked copies" in only.stderr
    assert str(copy) in only.stderr
