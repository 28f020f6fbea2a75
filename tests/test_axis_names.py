"""``Dim.AUTO`` / ``Dim.DYNAMIC`` axes are recorded under a readable name: the first axis that has
their size, e.g. ``"x.shape[0]"``.

They were recorded under torch.export's symbol (``"s17"``), which the runtime's error then
showed: "Inputs 'x', 'y' share the dynamic dimension 's17', ... Pass inputs of the same 's17'
size", and "expected (s17, 6)": a name that says nothing about which axis it is.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from skprotect_pytorch.protect import SkProtectorPyTorch
from skruntime import SkRuntime
from skruntime.errors import InputError

AUTO = torch.export.Dim.AUTO


class Three(nn.Module):
    """``a(x) + b(y)`` ties the batches of ``x`` and ``y``; ``z`` is only summed, so its batch
    is free."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 3)
        self.b = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.a(x) + self.b(y) + z.sum()


def _zeros(*shape: int) -> np.ndarray:
    return np.zeros(shape, np.float32)


def test_auto_axes_are_named_after_the_first_axis_of_their_size(workdir: Path) -> None:
    torch.manual_seed(0)
    protector = SkProtectorPyTorch(application_name="app")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        protector.protect_new_model(
            Three().eval(),
            "m",
            [torch.randn(2, 6), torch.randn(2, 4), torch.randn(3, 5)],
            model_export_formats=SkProtectorPyTorch.ExportFormat.ONNX,
            dynamic_shapes=[{0: AUTO}, {0: AUTO}, {0: AUTO}],
            onnx_params={"input_names": ["x", "y", "z"], "output_names": ["out"]},
        )
    config = json.loads(protector.config_path(SkProtectorPyTorch.ExportPlatform.TXT).read_text())
    inputs = config["payload"]["models"]["m"]["inputs"]
    assert [spec["dynamic_dims"] for spec in inputs] == [
        {"0": "x.shape[0]"},
        {"0": "x.shape[0]"},
        {"0": "z.shape[0]"},
    ]
    with SkRuntime(protector.outputs_dir).load("m") as model:
        assert np.asarray(model(_zeros(4, 6), _zeros(4, 4), _zeros(7, 5))).shape == (4, 3)
        message = (
            "Inputs 'x', 'y' share the dynamic dimension 'x.shape[0]', which must have one size "
            "in a call, but 'x' has 2 on axis 0, 'y' has 3 on axis 0. Pass inputs of the same "
            "'x.shape[0]' size."
        )
        with pytest.raises(InputError, match=message.replace("[0]", r"\[0\]")) as caught:
            model(_zeros(2, 6), _zeros(3, 4), _zeros(3, 5))
        assert "'y': shape (x.shape[0], 4), dtype float32" in str(caught.value)
