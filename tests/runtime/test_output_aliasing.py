"""Outputs of the torch backends own their memory: a caller may write to them.

An output that is (a view of) an input, or a tensor the model keeps (a buffer returned as is),
came back as a numpy view of that memory: writing to it changed the caller's input, or, for a
TorchScript constant, every later call's output. onnxruntime always returns new arrays.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from skprotect_pytorch.formats import ExportFormat as EF
from skprotect_pytorch.protect import SkProtectorPyTorch
from skruntime import SkRuntime


class ReturnsViews(nn.Module):
    """Logits, a buffer as is, a view of the buffer, a view of the input, the input reshaped."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.register_buffer("anchors", torch.arange(6.0).reshape(2, 3))

    def forward(self, x: torch.Tensor):
        return self.fc(x), self.anchors, self.anchors.t(), x[:, :2], x.reshape(-1)


def _protect(app: str, formats: EF) -> Path:
    torch.manual_seed(0)
    SkProtectorPyTorch(application_name=app).protect_new_model(
        ReturnsViews().eval(),
        "views",
        [torch.randn(2, 4)],
        model_export_formats=formats,
        dynamic_shapes=({0: torch.export.Dim("batch", max=64)},),
    )
    return Path("outputs") / app


@pytest.fixture(scope="module")
def torchscript(module_workdir: Path) -> Path:
    return module_workdir / _protect("ts", EF.ONNX | EF.TORCHSCRIPT_CPU)


@pytest.fixture(scope="module")
def aoti(module_workdir: Path) -> Path:
    return module_workdir / _protect("aoti", EF.INDUCTOR_CPU)


def _as_numpy(outputs: tuple) -> list[np.ndarray]:
    return [o.numpy() if isinstance(o, torch.Tensor) else o for o in outputs]


def _check_outputs_are_the_callers(outputs: Path, fmt: str, kind: str) -> None:
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    given = x.copy()
    with SkRuntime(outputs).load("views", fmt=fmt) as model:
        first = _as_numpy(model(torch.from_numpy(given) if kind == "torch" else given))
        expected = [o.copy() for o in first]
        for out in first:
            assert not np.shares_memory(out, given)
            out[...] = -7.0
        np.testing.assert_array_equal(given, x)
        again = _as_numpy(model(x.copy()))
    for out, want in zip(again, expected, strict=True):
        np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(again[1], np.arange(6.0, dtype=np.float32).reshape(2, 3))


@pytest.mark.parametrize("kind", ["numpy", "torch"])
@pytest.mark.parametrize("fmt", ["onnx", "torchscript_cpu"])
def test_writing_outputs_changes_neither_inputs_nor_later_calls(
    torchscript: Path, fmt: str, kind: str
) -> None:
    _check_outputs_are_the_callers(torchscript, fmt, kind)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_aotinductor_outputs_are_the_callers(aoti: Path, kind: str) -> None:
    _check_outputs_are_the_callers(aoti, "inductor_cpu", kind)
