"""An axis the model cannot vary is refused naming the argument that declared it dynamic."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.export import Dim

from skprotect_pytorch.errors import InvalidArgumentError
from skprotect_pytorch.protect import SkProtectorPyTorch

EF = SkProtectorPyTorch.ExportFormat


@pytest.mark.parametrize(
    ("given", "named"),
    [
        ({"dynamic_shapes": [{1: Dim("f")}]}, "dynamic_shapes"),
        (
            {"onnx_params": {"input_names": ["x"], "dynamic_axes": {"x": {1: "f"}}}},
            'onnx_params["dynamic_axes"]',
        ),
        (
            {"onnx_params": {"input_names": ["x"], "dynamic_shapes": [{1: Dim("f")}]}},
            'onnx_params["dynamic_shapes"]',
        ),
    ],
    ids=["dynamic_shapes", "dynamic_axes", "onnx-dynamic_shapes"],
)
def test_an_axis_the_model_cannot_vary_names_the_argument_given(
    workdir: Path, given: dict, named: str
) -> None:
    """A Linear's feature axis declared dynamic is refused naming the argument that declared
    it: with onnx_params["dynamic_axes"] the message said "dynamic_shapes declares axes",
    an argument the call left at None."""
    mlp = nn.Sequential(nn.Linear(8, 4)).eval()
    protector = SkProtectorPyTorch(application_name="app")
    with pytest.raises(InvalidArgumentError) as info:
        protector.protect_new_model(
            mlp, "m", [torch.randn(2, 8)], model_export_formats=EF.ONNX, **given
        )
    assert re.match(
        rf"{re.escape(named)} declares axes the model cannot vary: with f=9 ", str(info.value)
    )
