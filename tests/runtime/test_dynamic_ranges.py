"""The runtime refuses a dynamic size outside the range the model file records for it.

The ranges (``torch.export.Dim("batch", min=2, max=8)``) are recorded in the model file's
``skprotect.inputs`` metadata, not in the configuration (whose older readers refuse unknown
fields). Here the files are built by hand (ONNX, TorchScript) and the specs given directly
(AOTInductor's ``check_inputs``), so no protection runs; files without ranges run as before.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from skruntime.backends import BackendOptions
from skruntime.backends.inductor import check_inputs
from skruntime.backends.inputs import INPUTS_METADATA, input_specs, parse_specs, spec_ranges
from skruntime.backends.onnxruntime import OnnxRuntimeBackend
from skruntime.backends.torchscript import TorchScriptBackend
from skruntime.config import InputSpec, OutputSpec
from skruntime.errors import BackendError, InputError
from skruntime.runtime import LoadedModel

Dim = torch.export.Dim
KEY = np.full(3, 2.0, np.float32)
SPECS = [
    {"shape": [None, 3], "dtype": "float32", "name": "x", "ranges": {"0": [2, 8]}},
    {"shape": [3], "dtype": "float32", "name": "key_vector", "key": True},
]


def onnx_file(folder: Path, specs: list[dict] | None) -> Path:
    """``y = x * key``, x ``(batch, 3)``; ``specs`` as its metadata (None: no metadata)."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "key_vector"], ["y"])],
        "net",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("key_vector", TensorProto.FLOAT, [3]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if specs is not None:
        helper.set_model_props(model, {INPUTS_METADATA: json.dumps(specs)})
    path = folder / "net.onnx"
    onnx.save(model, path)
    return path


class Mul(torch.nn.Module):
    def forward(self, x: torch.Tensor, key_vector: torch.Tensor) -> torch.Tensor:
        return x * key_vector


def torchscript_file(folder: Path, specs: list[dict] | None) -> Path:
    path = folder / "net.pt"
    extra = {} if specs is None else {INPUTS_METADATA: json.dumps(specs)}
    torch.jit.save(torch.jit.script(Mul()), str(path), _extra_files=extra)
    return path


def loaded(tmp_path: Path, fmt: str, specs: list[dict] | None) -> LoadedModel:
    if fmt == "onnx":
        backend = OnnxRuntimeBackend(onnx_file(tmp_path, specs), BackendOptions())
    else:
        backend = TorchScriptBackend(torchscript_file(tmp_path, specs), BackendOptions())
    spec = InputSpec("x", (4, 3), "float32", {0: "batch"})
    return LoadedModel("net", fmt, [spec], [OutputSpec("y")], KEY.copy(), backend)


FORMATS = ["onnx", "torchscript_cpu"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_sizes_outside_the_recorded_range_are_refused(tmp_path, fmt):
    model = loaded(tmp_path, fmt, SPECS)
    for n in (2, 5, 8):
        x = np.ones((n, 3), np.float32)
        np.testing.assert_array_equal(np.asarray(model(x)), x * KEY)
    with pytest.raises(InputError) as above:
        model(np.ones((100, 3), np.float32))
    message = str(above.value)
    for part in ("'x'", "size 100 on axis 0", "'batch'", "sizes 2 to 8", "at most 8", "Dim("):
        assert part in message, message
    with pytest.raises(InputError, match=r"size 1 on axis 0 .*sizes 2 to 8.*Pad it to 2"):
        model(np.ones((1, 3), np.float32))
    with pytest.raises(InputError, match="size 9 on axis 0"):
        model.run({"x": torch.ones(9, 3)})  # tensors and run() too


@pytest.mark.parametrize("fmt", FORMATS)
def test_files_without_ranges_take_any_size(tmp_path, fmt):
    """Files written before ranges were recorded (and axes declared without bounds)."""
    old = [{k: v for k, v in s.items() if k != "ranges"} for s in SPECS]
    for specs in (old, None):
        folder = tmp_path / str(specs is None)
        folder.mkdir()
        model = loaded(folder, fmt, specs)
        for n in (1, 100):
            x = np.ones((n, 3), np.float32)
            np.testing.assert_array_equal(np.asarray(model(x)), x * KEY)


def test_expected_inputs_show_the_range(tmp_path):
    model = loaded(tmp_path, "onnx", SPECS)
    assert model.expected_inputs() == "  'x': shape (batch, 3), dtype float32, batch 2 to 8"
    with pytest.raises(InputError, match="batch 2 to 8"):
        model(np.ones((3, 4), np.float32))  # any refusal lists the expected inputs


def test_lowest_size_only(tmp_path):
    specs = [{**SPECS[0], "ranges": {"0": [3, None]}}, SPECS[1]]
    model = loaded(tmp_path, "onnx", specs)
    assert model(np.ones((1000, 3), np.float32)).shape == (1000, 3)
    with pytest.raises(InputError, match=r"size 2 on axis 0 .*sizes at least 3"):
        model(np.ones((2, 3), np.float32))


def test_aoti_check_inputs_refuses_out_of_range():
    """The AOTInductor check (backend and protector's loader) reads the stored JSON as is."""
    key = torch.ones(3)
    check_inputs([torch.ones(8, 3), key], SPECS, ["x", "key_vector"], "net.pt2", "key_vector")
    for n in (1, 9):
        with pytest.raises(InputError, match=rf'"x": it has size {n} on axis 0, .*sizes 2 to 8'):
            check_inputs(
                [torch.ones(n, 3), key], SPECS, ["x", "key_vector"], "net.pt2", "key_vector"
            )


@pytest.mark.parametrize(
    ("dim", "recorded"),
    [
        (Dim("batch", min=2, max=8), [2, 8]),
        (Dim("batch", min=1, max=64), [1, 64]),
        (Dim("batch", min=3), [3, None]),
        (2 * Dim("half", min=2, max=8), [4, 16]),
        (Dim.AUTO(min=2, max=9), [2, 9]),
        (Dim("batch"), None),  # torch's default: 0 to int_oo, nothing to check
        (Dim.AUTO, None),
        (Dim.DYNAMIC, None),
    ],
    ids=str,
)
def test_input_specs_record_the_declared_range(dim, recorded):
    specs = input_specs(
        [torch.ones(4, 3), torch.ones(3)], ({0: dim}, None), ["x", "key_vector"], "key_vector"
    )
    assert specs[0]["shape"] == [None, 3]
    assert specs[0].get("ranges") == (None if recorded is None else {"0": recorded})
    assert "ranges" not in specs[1]
    parsed, _, _ = parse_specs(json.dumps(specs), "net.pt2")
    assert spec_ranges(parsed[0]) == ({} if recorded is None else {0: tuple(recorded)})


@pytest.mark.parametrize(
    "ranges",
    [
        {"0": [8, 2]},  # highest below lowest
        {"1": [2, 8]},  # a static axis
        {"2": [2, 8]},  # no such axis
        {"0": [-1, 8]},
        {"0": [True, 8]},
        {"0": [2]},
        {"0": "2..8"},
        {"x": [2, 8]},
        [[2, 8]],
    ],
    ids=str,
)
def test_malformed_ranges_are_refused(ranges):
    specs = [{**SPECS[0], "ranges": ranges}, SPECS[1]]
    with pytest.raises(BackendError, match=r"unreadable skprotect\.inputs metadata"):
        parse_specs(json.dumps(specs), "net.onnx")
