"""The protector pipeline on models whose outputs or inputs are out of the ordinary: bool and
dict outputs, a forward that changes its inputs in place, buffers stored as they are."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from skprotect_pytorch.lock.coverage import PlaintextWeight
from skprotect_pytorch.protect import SkProtectorPyTorch
from skprotect_pytorch.result import ProtectionResult
from skruntime import SkRuntime

EF = SkProtectorPyTorch.ExportFormat
X = torch.linspace(-1.0, 1.0, 6).reshape(2, 3)


class Linear3(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(3, 3)


class BoolOut(Linear3):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) > 0


class InPlace(Linear3):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.mul_(2)
        return self.fc(x)


class DictOut(Linear3):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = self.fc(x)
        return {"first": y, "second": y * 2}


class Masked(Linear3):
    """A public 2-D table kept as a buffer, as attention masks are."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mask", torch.tril(torch.ones(3, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) @ self.mask


def _protect(model: nn.Module, fmt: EF, inputs: list[torch.Tensor]) -> ProtectionResult:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SkProtectorPyTorch(application_name="app").protect_new_model(
            model.eval(), "m", inputs, model_export_formats=fmt, test_key=True
        )


def _run(fmt: str, x: np.ndarray) -> list[np.ndarray]:
    with SkRuntime("outputs/app").load("m", fmt) as model:
        return [np.asarray(y) for y in model.run([x])]


def test_a_bool_output_is_compared_not_subtracted(workdir: Path) -> None:
    """numpy refuses ``-`` on bools: the comparison crashed with its raw TypeError."""
    result = _protect(BoolOut(), EF.ONNX, [X.clone()])
    assert result.formats["onnx"].max_rel_error == 0.0
    (y,) = _run("onnx", X.numpy())
    assert y.dtype == np.bool_
    assert np.array_equal(y, (BoolOut().eval()(X) > 0).numpy())


@pytest.mark.parametrize("fmt", [EF.ONNX, EF.TORCHSCRIPT_CPU])
def test_a_forward_changing_its_input_in_place_runs_on_copies(workdir: Path, fmt: EF) -> None:
    """The original, the locked model and the artifacts each changed the caller's tensor (or
    the check's arrays) in turn, so the locked model saw 4x and the protection failed."""
    x = X.clone()
    result = _protect(InPlace(), fmt, [x])
    assert torch.equal(x, X)  # the caller's example is as it was
    assert result.formats[fmt.slug].max_rel_error < 1e-4
    expected = InPlace().eval()(X.clone()).detach().numpy()
    np.testing.assert_allclose(_run(fmt.slug, X.numpy().copy())[0], expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("fmt", [EF.ONNX, EF.TORCHSCRIPT_CPU])
def test_dict_outputs_are_its_values_in_order(workdir: Path, fmt: EF) -> None:
    """The exporters' check and the runtime flatten a dict to its values; the reference run
    refused it (ExportError) before any export."""
    _protect(DictOut(), fmt, [X.clone()])
    first, second = _run(fmt.slug, X.numpy())
    expected = DictOut().eval()(X)
    np.testing.assert_allclose(first, expected["first"].detach().numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(second, expected["second"].detach().numpy(), rtol=1e-4, atol=1e-6)


def test_buffers_stored_as_they_are_are_reported(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="skprotect"):
        result = _protect(Masked(), EF.ONNX, [X.clone()])
    reason = "buffer of Masked, not a parameter: the lock keys parameters only"
    assert result.plaintext_buffers == [PlaintextWeight("mask", (3, 3), reason)]
    assert result.plaintext_weights == []
    assert "buffers stored as they are: 1 (readable without the key" in str(result)
    assert "    - mask (3, 3)" in str(result)
    logged = [r for r in caplog.records if "stored as they are" in r.getMessage()]
    assert [r.levelno for r in logged] == [logging.INFO]
    assert "mask (3, 3)" in logged[0].getMessage()
