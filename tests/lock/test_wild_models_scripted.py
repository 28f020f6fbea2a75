"""A model from the wild that calls a ``torch.jit.script``-ed submodule: the ONNX and
AOTInductor exports trace the model with ``torch.onnx.export`` / ``torch.export``, which cannot
run through TorchScript code, so these formats are refused up front with what to change."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from skprotect_pytorch.errors import InvalidArgumentError
from skprotect_pytorch.protect import SkProtectorPyTorch

EF = SkProtectorPyTorch.ExportFormat
X = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))


class _ScriptedPart(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = torch.jit.script(nn.Sequential(nn.Linear(16, 8), nn.ReLU()))
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


@pytest.mark.parametrize("formats", [EF.ONNX, EF.INDUCTOR_CPU | EF.TORCHSCRIPT_CPU])
def test_a_scripted_submodule_is_refused_before_any_work(formats: EF, workdir: Path) -> None:
    """Was: the model locked, then "ONNX export failed (... Tried to trace <...Sequential
    object> but it is not part of the active trace ...). Check that the model runs with
    input_tensors and that onnx_params holds valid torch.onnx.export arguments"."""
    protector = SkProtectorPyTorch(application_name="app")
    with pytest.raises(
        InvalidArgumentError, match=r"TorchScript submodule\(s\) 'encoder' .*eager nn\.Modules"
    ):
        protector.protect_new_model(_ScriptedPart(), "m", [X], model_export_formats=formats)
    assert not (protector.outputs_dir / "m").exists()
