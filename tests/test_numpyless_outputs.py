"""A model whose forward returns a dtype NumPy lacks (bfloat16) is the caller's input error,
said with what to do, not a bare TypeError from inside torch's .numpy()."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from skprotect_pytorch.errors import InvalidArgumentError
from skprotect_pytorch.formats import ExportFormat
from skprotect_pytorch.protect import SkProtectorPyTorch


class _Bf16Out(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.fc(x)
        return y, y.to(torch.bfloat16)


def test_a_bfloat16_output_is_an_input_error(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    protector = SkProtectorPyTorch(application_name="app")
    with pytest.raises(InvalidArgumentError, match=r"returns output\[1\] \(bfloat16\).*float32"):
        protector.protect_new_model(
            _Bf16Out().eval(),
            "m",
            [torch.randn(2, 4)],
            model_export_formats=ExportFormat.ONNX,
            test_key=True,
        )
