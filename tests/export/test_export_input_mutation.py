"""The torch exporters copy, inside the artifact, only the inputs that forward changes in place."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from tests.export.toy_models import Toy
from torch import nn
from torch.export import Dim

import skprotect_pytorch.export.base as base
from skprotect_pytorch.errors import InvalidArgumentError
from skprotect_pytorch.export import build_export_options, get_exporter
from skprotect_pytorch.export.base import mutated_inputs
from skprotect_pytorch.formats import ExportFormat

TS = get_exporter(ExportFormat.TORCHSCRIPT_CPU)


class ClampsInPlace(nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        y.clamp_(min=0)
        return x * y


def test_an_in_place_op_that_keeps_the_values_is_found() -> None:
    x, y = torch.randn(2, 3), torch.rand(2, 3)  # y >= 0: clamp_ leaves its values
    assert mutated_inputs(ClampsInPlace(), (x, y)) == [1]
    assert mutated_inputs(Toy().eval(), (torch.randn(2, 8), torch.rand(10))) == []


def test_only_a_model_that_changes_its_inputs_is_wrapped(tmp_path) -> None:
    params = {"input_names": ["x", "y"], "output_names": ["z"]}
    x, y = torch.randn(2, 3), torch.randn(2, 3)
    opts = build_export_options([x, y], params, ({0: Dim("batch")}, {0: Dim("batch")}))
    report = TS.export(ClampsInPlace(), (x, y), tmp_path / "m.pt", opts, with_key=False)
    assert [n for n in report.notes if "in place" in n] == [
        "forward() changes input(s) 'y' in place: the artifact copies them first, so that it "
        "never changes the caller's arrays"
    ]
    run = TS.load(report.path, opts)
    xs, ys = np.ones((3, 3), np.float32), -np.ones((3, 3), np.float32)
    np.testing.assert_array_equal(run([xs, ys])[0], np.zeros((3, 3), np.float32))
    assert (ys == -1).all()
    plain = TS.export(
        Toy().eval(),
        (torch.randn(2, 8), torch.rand(10)),
        tmp_path / "toy.pt",
        build_export_options([torch.randn(2, 8)], {"input_names": ["x"], "output_names": ["y"]}),
        with_key=True,
    )
    assert not [n for n in plain.notes if "in place" in n]


def test_positions_the_caller_found_are_taken_without_a_run(tmp_path, monkeypatch) -> None:
    """``ExportOptions.mutated_inputs`` (the protector's checked run found them) spares the
    exporter its own run of the model; a position beyond the inputs is refused."""

    def no_run(*args, **kwargs):
        raise AssertionError("the exporter ran the model to find input mutation")

    monkeypatch.setattr(base, "mutated_inputs", no_run)
    params = {"input_names": ["x", "y"], "output_names": ["z"]}
    x, y = torch.randn(2, 3), torch.randn(2, 3)
    opts = dataclasses.replace(build_export_options([x, y], params, None), mutated_inputs=(1,))
    report = TS.export(ClampsInPlace(), (x, y), tmp_path / "m.pt", opts, with_key=False)
    assert [n for n in report.notes if "'y' in place" in n]
    ys = -np.ones((2, 3), np.float32)
    TS.load(report.path, opts)([np.ones((2, 3), np.float32), ys])
    assert (ys == -1).all()
    wrong = dataclasses.replace(opts, mutated_inputs=(2,))
    with pytest.raises(InvalidArgumentError, match=r"mutated_inputs \[2\] names inputs beyond"):
        TS.export(ClampsInPlace(), (x, y), tmp_path / "w.pt", wrong, with_key=False)
