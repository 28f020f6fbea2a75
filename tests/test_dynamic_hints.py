"""Axes given as ``Dim.AUTO`` / ``Dim.DYNAMIC`` / ``Dim.STATIC`` hints are recorded under the
symbolic size torch.export gave them (named after the first axis that has it, e.g.
``input.1.shape[0]``), so the runtime ties the axes torch found equal.

They were recorded as ``"DimHint(AUTO)"``, which ties nothing: an AOTInductor package called
with batches 3 and 5 on two inputs torch had found equal returned a (3, 3) result without an
error, and with 5 and 3 read past the end of the smaller input; ONNX failed inside
onnxruntime; an AUTO axis torch had fixed, or a STATIC one, was accepted at any size.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from skprotect_pytorch.protect import SkProtectorPyTorch
from skruntime import SkRuntime
from skruntime.errors import InputError

EF = SkProtectorPyTorch.ExportFormat
Dim = torch.export.Dim
TIED = r"share the dynamic dimension 'input\.1\.shape\[0\]'"
"""The runtime's error for tied axes of different sizes, naming the first input's axis."""


class AddTwo(nn.Module):
    """``fc(a) + b``: the batch of ``a`` and of ``b`` must be equal."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.fc(a) + b


class Mixed(AddTwo):
    """Three inputs: ``c``'s first axis is fixed to 3 by ``view``."""

    def forward(self, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.fc(a) + b + c.view(3, -1).sum()


def _protect(model: nn.Module, inputs: list, shapes: tuple, fmt: EF) -> dict:
    """Protect ``model`` into the current folder; returns its configuration inputs."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        SkProtectorPyTorch(application_name="app").protect_new_model(
            model.eval(),
            "m",
            inputs,
            model_export_formats=fmt,
            dynamic_shapes=shapes,
            test_key=True,
        )
    config = json.loads(Path("outputs/app/skconfig.json").read_text())
    return config["payload"]["models"]["m"]["inputs"]


def _x(n: int) -> np.ndarray:
    return np.random.default_rng(n).standard_normal((n, 3)).astype(np.float32)


def _check_runtime_ties(fmt: str) -> None:
    """Equal batches run; unequal ones (either way) are an InputError naming both inputs."""
    with SkRuntime("outputs/app").load("m", fmt) as model:
        assert np.asarray(model(_x(5), _x(5))).shape == (5, 3)
        for first, second in ((3, 5), (5, 3)):
            with pytest.raises(InputError, match=TIED):
                model(_x(first), _x(second))


def test_auto_axes_torch_found_equal_are_tied_in_onnx(workdir: Path) -> None:
    example = [torch.randn(4, 3), torch.randn(4, 3)]
    inputs = _protect(AddTwo(), example, ({0: Dim.AUTO}, {0: Dim.AUTO}), EF.ONNX)
    names = [spec["dynamic_dims"]["0"] for spec in inputs]
    assert names == ["input.1.shape[0]"] * 2, names
    _check_runtime_ties("onnx")


@pytest.mark.slow
def test_auto_axes_torch_found_equal_are_tied_in_inductor(workdir: Path) -> None:
    """The silent case: AOTInductor reads one input's batch for both."""
    example = [torch.randn(4, 3), torch.randn(4, 3)]
    shapes = ({0: Dim.DYNAMIC}, {0: Dim.AUTO})
    inputs = _protect(AddTwo(), example, shapes, EF.INDUCTOR_CPU)
    assert inputs[0]["dynamic_dims"] == inputs[1]["dynamic_dims"]
    _check_runtime_ties("inductor_cpu")


def test_hints_take_a_named_dims_name_and_fixed_axes_are_static(workdir: Path) -> None:
    """A hint torch tied to a named Dim takes its name; an AUTO axis torch fixed and a STATIC
    one are static, so another size is refused before the backend sees it."""
    example = [torch.randn(4, 3), torch.randn(4, 3), torch.randn(3, 5)]
    shapes = ({0: Dim("batch")}, {0: Dim.AUTO}, {0: Dim.AUTO, 1: Dim.STATIC})
    inputs = _protect(Mixed(), example, shapes, EF.ONNX)
    assert [spec["dynamic_dims"] for spec in inputs] == [{"0": "batch"}, {"0": "batch"}, {}]
    c = np.ones((3, 5), np.float32)
    with SkRuntime("outputs/app").load("m", "onnx") as model:
        assert np.asarray(model(_x(6), _x(6), c)).shape == (6, 3)
        with pytest.raises(InputError, match="'batch'"):
            model(_x(6), _x(2), c)
        for wrong in (np.ones((4, 5), np.float32), np.ones((3, 6), np.float32)):
            with pytest.raises(InputError):
                model(_x(6), _x(6), wrong)


class Positions(nn.Module):
    """Adds a learned table of 8 positions: the sequence axis has at most 8 entries."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3)
        self.table = nn.Parameter(torch.randn(8, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) + self.table[: x.shape[0]]


def test_an_auto_axis_at_its_highest_size_is_checked_one_shorter(workdir: Path) -> None:
    """The other-size check uses the range torch.export found for a hint: one longer than an
    example at the table's length would fail the original and refuse the axis."""
    inputs = _protect(Positions(), [torch.randn(8, 3)], ({0: Dim.AUTO},), EF.ONNX)
    (name,) = inputs[0]["dynamic_dims"].values()
    assert name == "input.1.shape[0]", name
    with SkRuntime("outputs/app").load("m", "onnx") as model:
        assert np.asarray(model(_x(5))).shape == (5, 3)


def test_hints_are_kept_unnamed_when_torch_export_fails(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A model torch.export cannot export (TorchScript is traced instead) keeps the hints'
    own names, which tie nothing, and the log says so; a STATIC axis stays static."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("cannot export this model")

    monkeypatch.setattr(torch.export, "export", refuse)
    example = [torch.randn(4, 3), torch.randn(4, 3)]
    shapes = ({0: Dim.AUTO, 1: Dim.STATIC}, {0: Dim.AUTO})
    with caplog.at_level(logging.WARNING, logger="skprotect"):
        inputs = _protect(AddTwo(), example, shapes, EF.TORCHSCRIPT_CPU)
    assert [spec["dynamic_dims"] for spec in inputs] == [{"0": "DimHint(AUTO)"}] * 2
    assert "torch.export cannot resolve the Dim.AUTO / Dim.DYNAMIC axes" in caplog.text
    assert "cannot export this model" in caplog.text
