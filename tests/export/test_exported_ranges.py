"""The input record of a file written through ``torch.export`` holds the ranges torch exported
its dynamic axes for, where they are narrower than the declared ones.

Before, only a ``Dim``'s declared min/max were recorded: a ``Dim.AUTO`` axis (which
torch.export exports for sizes >= 2) or an axis the model needs longer (a ``Conv1d`` of kernel 3
on the sequence: >= 3) recorded nothing, and the runtime let a batch of 1 or a sequence of 2
reach a program that was not exported for it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.export import Dim

from skprotect_pytorch.export import build_export_options, get_exporter
from skprotect_pytorch.export.base import recorded_ranges
from skprotect_pytorch.export.options import SizeRange, exported_axes
from skprotect_pytorch.formats import ExportFormat
from skprotect_pytorch.protect import SkProtectorPyTorch
from skruntime import InputError, SkRuntime
from skruntime.backends.inputs import INPUTS_METADATA

AUTO = ({0: Dim.AUTO, 1: Dim.AUTO},)


class SeqConv(nn.Module):
    """(batch, seq, 6) -> (batch, 3, seq - 2): the sequence must be at least 3 long."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(6, 3, kernel_size=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.transpose(1, 2))


class Halves(nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x[:, ::2] + y


def example() -> torch.Tensor:
    return torch.randn(2, 5, 6)


def test_exported_axes_are_torch_exports_ranges():
    program = torch.export.export(SeqConv().eval(), (example(),), dynamic_shapes=AUTO)
    assert exported_axes(program) == [{0: SizeRange(2, None), 1: SizeRange(3, None)}]
    s = Dim("s", min=2, max=50)
    twice = torch.export.export(
        Halves(), (torch.randn(2, 8), torch.randn(2, 4)), dynamic_shapes=({1: 2 * s}, {1: s})
    )
    assert exported_axes(twice) == [{1: SizeRange(4, 100)}, {1: SizeRange(2, 50)}]


def test_record_takes_the_narrower_of_exported_and_declared():
    x = example()
    shapes = ({0: Dim("b", min=2, max=8), 1: Dim.AUTO, 2: Dim.STATIC},)
    opts = build_export_options([x], {"input_names": ["x"]}, shapes)
    exported = [{0: SizeRange(0, None), 1: SizeRange(3, None)}]
    (spec,) = json.loads(opts.inputs_record([x], False, exported)[INPUTS_METADATA])
    assert spec["shape"] == [None, None, 6]
    assert spec["ranges"] == {"0": [2, 8], "1": [3, None]}
    # an axis torch fixed to its example size (absent from exported) is recorded static
    (fixed,) = json.loads(opts.inputs_record([x], False, [{0: SizeRange(2, 8)}])[INPUTS_METADATA])
    assert fixed["shape"] == [None, 5, 6]
    # without an exported program: the declared axes and bounds; Dim.STATIC stays static
    (declared,) = json.loads(opts.inputs_record([x], False)[INPUTS_METADATA])
    assert declared["shape"] == [None, None, 6]
    assert declared["ranges"] == {"0": [2, 8]}


def test_onnx_records_the_sequence_range_torch_exported(tmp_path: Path):
    """torch.onnx exports size-obliviously (batch 0 and 1 stay valid), so the batch records no
    bound; the convolution's sequence of at least 3 is recorded and enforced."""
    opts = build_export_options([example()], {"input_names": ["x"]}, AUTO)
    exporter = get_exporter(ExportFormat.ONNX)
    report = exporter.export(
        SeqConv().eval(), (example(),), tmp_path / "m.onnx", opts, with_key=False
    )
    assert recorded_ranges(report.path) == [{"1": [3, None]}]
    legacy = build_export_options([example()], {"input_names": ["x"], "dynamo": False}, AUTO)
    old = exporter.export(
        SeqConv().eval(), (example(),), tmp_path / "l.onnx", legacy, with_key=False
    )
    assert recorded_ranges(old.path) is None  # no exported program: the declared (none)


def protected(root: Path, formats: ExportFormat) -> Path:
    torch.manual_seed(0)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("SKPROTECT_STATE_DIR", raising=False)
        SkProtectorPyTorch(application_name="app").protect_new_model(
            SeqConv().eval(), "net", [example()], model_export_formats=formats,
            dynamic_shapes=AUTO,
        )  # fmt: skip
    return root / "outputs/app"


def refused(loaded, shape: tuple[int, ...]) -> str:
    with pytest.raises(InputError) as err:
        loaded(np.zeros(shape, np.float32))
    return str(err.value)


def test_runtime_refuses_a_sequence_the_onnx_file_was_not_exported_for(tmp_path: Path):
    outputs = protected(tmp_path, ExportFormat.ONNX)
    with SkRuntime(outputs).load("net", "onnx") as loaded:
        assert loaded(np.ones((1, 3, 6), np.float32)).shape == (1, 3, 1)
        assert "size 2 on axis 1" in refused(loaded, (2, 2, 6))


@pytest.mark.slow
def test_runtime_refuses_sizes_the_aoti_package_was_not_exported_for(tmp_path: Path):
    """torch.export (no size-oblivious tracing) exports a hint for sizes >= 2: the package
    records it, and a batch of 1 is refused instead of running code compiled for >= 2."""
    outputs = protected(tmp_path, ExportFormat.INDUCTOR_CPU)
    assert recorded_ranges(outputs / "net/cpu/net.pt2") == [{"0": [2, None], "1": [3, None]}, None]
    with SkRuntime(outputs).load("net", "inductor_cpu") as loaded:
        assert loaded(np.ones((2, 3, 6), np.float32)).shape == (2, 3, 1)
        assert "sizes at least 2" in refused(loaded, (1, 5, 6))
        assert "size 2 on axis 1" in refused(loaded, (2, 2, 6))
