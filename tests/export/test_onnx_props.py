"""The input record of an ONNX file is read without parsing the model.

Before, ``recorded_ranges`` parsed the whole file with ``onnx.load`` (weights included): for a
200 MB model 0.25-0.3 s and +400 MiB of peak memory, twice per format when a protection checks
whether the other platform's file can be kept. It now reads the top-level field headers only."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn
from torch.export import Dim

from skprotect_pytorch.export import build_export_options, get_exporter
from skprotect_pytorch.export.base import recorded_ranges
from skprotect_pytorch.formats import ExportFormat
from skruntime.backends.inputs import INPUTS_METADATA
from skruntime.backends.onnx_props import metadata_props

RECORD = [{"shape": [None, 512], "dtype": "float32", "ranges": {"0": [2, 8]}}]


def large_model(path: Path) -> Path:
    """A 16 MiB ONNX model (weights inline) with an input record."""
    weight = numpy_helper.from_array(np.ones((4096, 1024), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4096])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1024])],
        [weight],
    )
    model = helper.make_model(graph)
    helper.set_model_props(model, {"other": "x", INPUTS_METADATA: json.dumps(RECORD)})
    onnx.save(model, str(path))
    return path


def test_record_read_without_loading_the_weights(tmp_path: Path):
    path = large_model(tmp_path / "big.onnx")
    tracemalloc.start()
    try:
        assert recorded_ranges(path) == [{"0": [2, 8]}]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak  # onnx.load read the 16 MiB file into memory


def test_truncated_file_records_nothing(tmp_path: Path):
    path = large_model(tmp_path / "big.onnx")
    data = path.read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[: len(data) // 2])
    assert recorded_ranges(cut) is None
    (tmp_path / "text.onnx").write_text("not a model")
    assert recorded_ranges(tmp_path / "text.onnx") is None


def test_props_of_an_exported_file_are_onnx_s(tmp_path: Path):
    """Our files: the weights appended one initializer at a time after the model."""
    x = torch.randn(2, 8)
    opts = build_export_options([x], {"input_names": ["x"]}, ({0: Dim("b", min=2, max=9)},))
    onnx_exporter = get_exporter(ExportFormat.ONNX)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    report = onnx_exporter.export(model, (x,), tmp_path / "m.onnx", opts, with_key=False)
    expected = {p.key: p.value for p in onnx.load(str(report.path)).metadata_props}
    assert metadata_props(report.path) == expected
    assert json.loads(expected[INPUTS_METADATA])[0]["ranges"] == {"0": [2, 9]}
