"""The original model's copies (``save_original=True``) keep the model's own names: its ONNX
initializers (what ``skprotect scan --original`` names) and its TorchScript inputs are those of
the user's module, not of a wrapper added for AOTInductor's NamedTuple outputs."""

from __future__ import annotations

from pathlib import Path

import onnx
import torch
from torch import nn

from skprotect_pytorch.protect import SkProtectorPyTorch

EF = SkProtectorPyTorch.ExportFormat


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 8)
        self.out = nn.Linear(8, 4)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.fc(features)))


def test_original_copies_keep_the_models_names(workdir: Path) -> None:
    """Was: initializers 'model.fc.weight', ... and a TorchScript input named 'input'."""
    protector = SkProtectorPyTorch(application_name="app")
    result = protector.protect_new_model(
        _Net(),
        "m",
        [torch.randn(2, 16)],
        model_export_formats=EF.ONNX | EF.TORCHSCRIPT_CPU,
        save_original=True,
    )
    files = {Path(f).suffix: Path(f) for f in result.original_files}
    graph = onnx.load(str(files[".onnx"])).graph
    assert sorted(i.name for i in graph.initializer) == [
        "fc.bias",
        "fc.weight",
        "out.bias",
        "out.weight",
    ]
    scripted = torch.jit.load(str(files[".pt"]))
    assert [a.name for a in scripted.forward.schema.arguments] == ["self", "features"]
