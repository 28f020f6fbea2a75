"""A model whose forward changes its inputs in place must not change the caller's arrays.

The torch backends hand the caller's numpy arrays to TorchScript and AOTInductor without a copy
(``torch.from_numpy``), so the exported artifact itself must leave its inputs alone: the
exporters copy, inside the artifact, the inputs that forward changes in place.
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

BATCH = {0: torch.export.Dim("batch", min=1, max=64)}


class ChangesInputs(nn.Module):
    """Changes both inputs in place (a view's write included); ``y.clamp_`` leaves positive
    values as they are, which must not hide that it writes to ``y``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x.mul_(2)
        x += 1
        x[:, 0] = 5.0
        y.clamp_(min=0)
        return self.fc(x) * y.sum(1, keepdim=True)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return ChangesInputs().eval()


def _protect(app: str, formats: EF) -> Path:
    example = [torch.randn(2, 4), torch.randn(2, 5)]
    SkProtectorPyTorch(application_name=app).protect_new_model(
        _model(), "net", example, model_export_formats=formats, dynamic_shapes=(BATCH, BATCH)
    )
    return Path("outputs") / app


@pytest.fixture(scope="module")
def fast(module_workdir: Path) -> Path:
    return module_workdir / _protect("fast", EF.ONNX | EF.TORCHSCRIPT_CPU)


@pytest.fixture(scope="module")
def aoti(module_workdir: Path) -> Path:
    return module_workdir / _protect("aoti", EF.INDUCTOR_CPU)


def _inputs(batch: int) -> list[np.ndarray]:
    rng = np.random.default_rng(batch)
    return [rng.standard_normal((batch, n)).astype(np.float32) for n in (4, 5)]


def _expected(inputs: list[np.ndarray]) -> np.ndarray:
    """The original model's outputs on copies of the unchanged inputs."""
    with torch.no_grad():
        return _model()(*(torch.from_numpy(a.copy()) for a in inputs)).numpy()


def _check_leaves_inputs_alone(outputs: Path, fmt: str) -> None:
    with SkRuntime(outputs).load("net", fmt=fmt) as model:
        for batch in (3, 1):
            inputs = _inputs(batch)
            given = [a.copy() for a in inputs]
            first = model(*given)
            assert all(np.array_equal(g, a) for g, a in zip(given, inputs, strict=True))
            second = model(*given)  # the same arrays again: the same outputs
            np.testing.assert_allclose(first, _expected(inputs), rtol=1e-4, atol=1e-4)
            np.testing.assert_array_equal(second, first)
            tensors = [torch.from_numpy(a.copy()) for a in inputs]
            model(*tensors)
            assert all(np.array_equal(t.numpy(), a) for t, a in zip(tensors, inputs, strict=True))


@pytest.mark.parametrize("fmt", ["onnx", "torchscript_cpu"])
def test_the_callers_arrays_stay_unchanged(fast: Path, fmt: str) -> None:
    _check_leaves_inputs_alone(fast, fmt)


@pytest.mark.slow
def test_the_callers_arrays_stay_unchanged_with_aotinductor(aoti: Path) -> None:
    _check_leaves_inputs_alone(aoti, "inductor_cpu")
