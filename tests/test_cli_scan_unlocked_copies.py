"""``skprotect scan`` of a folder names the unlocked copies it leaves out.

A folder is scanned without its ``original/`` folders, where ``save_original=True`` writes the
unlocked model. Until 2026-12-07 ``skprotect scan outputs/app`` of a protection made with
``save_original=True`` printed only "no weight of the original found" for the locked file and
exited 0, as the release check of a folder that held the original model in plaintext
(``outputs/app/m/original/m_onnx.onnx``); it now warns, naming each copy."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from typer.testing import CliRunner

from skprotect_pytorch.cli import app
from skprotect_pytorch.protect import SkProtectorPyTorch


def test_a_scanned_folder_with_unlocked_copies_warns_naming_them(workdir: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    torch.save(model.state_dict(), "original.pt")
    SkProtectorPyTorch(application_name="app").protect_new_model(
        model,
        "m",
        [torch.randn(2, 16)],
        model_export_formats=SkProtectorPyTorch.ExportFormat.ONNX,
        save_original=True,
    )
    copy = Path("outputs", "app", "m", "original", "m_onnx.onnx")
    assert copy.is_file()
    result = CliRunner().invoke(app, ["scan", "outputs/app", "--original", "original.pt"])
    assert result.exit_code == 0, result.output  # the locked file holds no weight
    assert "m.onnx: no weight of the original found" in result.stdout
    assert f"warning: not scanned: {copy}: unlocked copy" in result.stderr
    assert "Delete the original/ folder before shipping" in result.stderr
    locked_only = CliRunner().invoke(
        app, ["scan", "outputs/app/m/onnx", "--original", "original.pt"]
    )
    assert locked_only.exit_code == 0 and "warning" not in locked_only.stderr
