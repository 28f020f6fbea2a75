"""A model built on ``meta`` whose trained weights were loaded as advised
(``load_state_dict(state_dict, assign=True)``) still holds its non-persistent buffers there (a
rotary embedding's ``inv_freq``): no state_dict holds them. The refusal names them as such and
says to compute them; before, it said to load the weights again, which changes nothing (and
``to_empty`` leaves them uninitialised)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from skprotect_pytorch.errors import InvalidArgumentError
from skprotect_pytorch.protect import SkProtectorPyTorch

EF = SkProtectorPyTorch.ExportFormat


class _Rotary(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.register_buffer("inv_freq", torch.arange(8.0), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * self.inv_freq


def test_non_persistent_buffers_left_on_meta_are_named_with_what_to_do(workdir: Path) -> None:
    with torch.device("meta"):
        model = _Rotary()
    model.load_state_dict(_Rotary().state_dict(), assign=True)  # as the refusal advised
    with pytest.raises(InvalidArgumentError, match="inv_freq are non-persistent") as err:
        SkProtectorPyTorch(application_name="app").protect_new_model(
            model, "m", [torch.randn(2, 8)], model_export_formats=EF.ONNX
        )
    assert "load_state_dict(state_dict, assign=True)" not in str(err.value)
    assert "Compute them again" in str(err.value)
