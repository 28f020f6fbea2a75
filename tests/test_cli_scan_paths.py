"""``skprotect scan`` names each file it scans as it is: the progress line read a path as rich
markup, so ``m[v2].onnx`` was shown as ``m.onnx`` and a folder ``d[/x]`` ended the scan with a
``MarkupError`` traceback and exit code 1, which says a weight was found."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from typer.testing import CliRunner

from skprotect_pytorch.cli import app


def test_paths_with_brackets_are_scanned_and_named_as_they_are(workdir: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16)).eval()
    torch.save({"w": torch.randn(16, 16)}, "original.pt")  # weights the file does not hold
    (workdir / "d[" / "x]").mkdir(parents=True)
    for name in ("m[v2].onnx", "d[/x]/m.onnx"):
        torch.onnx.export(model, (torch.randn(1, 16),), name, dynamo=False)
    result = CliRunner().invoke(
        app, ["scan", "m[v2].onnx", "d[/x]/m.onnx", "--original", "original.pt"]
    )
    assert result.exit_code == 0, result.output
    for name in ("m[v2].onnx", "d[/x]/m.onnx"):
        assert f"✓ Scanning {name} (" in result.output
        assert f"{name}: no weight of the original found" in result.output
