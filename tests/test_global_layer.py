"""A layer that ``forward`` reaches through a global variable is not in the copy the lock works
on: it ran unlocked whatever the key, its outputs with the key matched the original's (so no
check saw it), and the ONNX file stored its true weight. The protection now refuses it, before
any file is written.  A plain tensor reached that way was stored unreported: it is listed as a
plaintext weight now, with a warning."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from skprotect_pytorch.errors import InvalidArgumentError
from skprotect_pytorch.protect import SkProtectorPyTorch

torch.manual_seed(0)
OUTSIDE = nn.Linear(8, 8)
PLAIN = torch.randn(8, 8)


class UsesAGlobal(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(OUTSIDE(x)))


class HoldsIt(UsesAGlobal):
    def __init__(self) -> None:
        super().__init__()
        self.body = OUTSIDE

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(x)))


def test_a_layer_reached_through_a_global_is_refused(workdir: Path) -> None:
    protector = SkProtectorPyTorch(application_name="app")
    x = torch.randn(2, 8)
    with pytest.raises(InvalidArgumentError, match=r"uses parameters that the model does not hold"):
        protector.protect_new_model(
            UsesAGlobal().eval(),
            "m",
            [x],
            model_export_formats=SkProtectorPyTorch.ExportFormat.ONNX,
        )
    assert not (workdir / "outputs" / "app" / "m").exists()
    # held as an attribute, the same layer is locked
    result = protector.protect_new_model(
        HoldsIt().eval(), "m", [x], model_export_formats=SkProtectorPyTorch.ExportFormat.ONNX
    )
    assert {d.name for d in result.locked_layers} == {"head", "body"}


class MultipliesByAGlobal(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = torch.tril(torch.ones(8, 8))  # made in forward: a constant, not a weight
        return self.head(x @ PLAIN + x @ mask)


def test_a_plain_tensor_reached_through_a_global_is_reported(workdir: Path) -> None:
    """The ONNX file stores it as it is; the result listed it nowhere and nothing warned."""
    protector = SkProtectorPyTorch(application_name="app")
    with pytest.warns(RuntimeWarning, match=rf"{__name__}\.PLAIN \(8, 8\)"):
        result = protector.protect_new_model(
            MultipliesByAGlobal().eval(),
            "m",
            [torch.randn(2, 8)],
            model_export_formats=SkProtectorPyTorch.ExportFormat.ONNX,
        )
    assert [(w.name, w.shape) for w in result.plaintext_weights] == [(f"{__name__}.PLAIN", (8, 8))]
    stored = onnx.load(str(result.formats["onnx"].path)).graph.initializer
    assert any(np.array_equal(numpy_helper.to_array(t), PLAIN.numpy()) for t in stored)
