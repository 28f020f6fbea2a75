"""``torch.onnx.export`` built its registry of ONNX functions from torchlib at every call (it
reads the source of about 500 functions: 0.8 s of a 1.9 s protection of a small model). The
ONNX exporter now builds it once per process and gives each export a copy: these tests pin that
the copy is the registry torch builds, that one export's additions do not reach the next, and
that torch's own builder is back after the export."""

from __future__ import annotations

import subprocess
import sys

import onnx
import torch
from torch import nn
from torch.onnx._internal.exporter import _registration

from skprotect_pytorch.export import build_export_options
from skprotect_pytorch.export import onnx as onnx_export

ORIGINAL = _registration.ONNXRegistry.__dict__["from_torchlib"]


def test_each_export_gets_a_copy_of_the_registry_torch_builds() -> None:
    fresh = _registration.ONNXRegistry.from_torchlib(opset_version=18)
    with onnx_export._torchlib_registry_reused():
        first = _registration.ONNXRegistry.from_torchlib(opset_version=18)
        assert _registration.ONNXRegistry.__dict__["from_torchlib"] is not ORIGINAL
        assert first.opset_version == fresh.opset_version == 18
        assert first.functions.keys() == fresh.functions.keys()
        for target, metas in fresh.functions.items():
            assert [m.onnx_function for m in first.functions[target]] == [
                m.onnx_function for m in metas
            ], target
        # what a custom_translation_table does to its export's registry
        torchlib_relu = fresh.functions["aten::relu"][0].onnx_function
        first.register_op(torch.ops.aten.relu.default, torchlib_relu)
        second = _registration.ONNXRegistry.from_torchlib(opset_version=18)
        assert len(first.functions["aten::relu"]) == len(fresh.functions["aten::relu"]) + 1
        assert len(second.functions["aten::relu"]) == len(fresh.functions["aten::relu"])
        assert _registration.ONNXRegistry.from_torchlib(opset_version=17).opset_version == 17
    assert _registration.ONNXRegistry.__dict__["from_torchlib"] is ORIGINAL


def test_torchs_builder_is_back_after_a_failed_export() -> None:
    try:
        with onnx_export._torchlib_registry_reused():
            raise RuntimeError("the export failed")
    except RuntimeError:
        pass
    assert _registration.ONNXRegistry.__dict__["from_torchlib"] is ORIGINAL


def test_an_export_with_the_reused_registry_writes_the_same_graph(tmp_path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.GELU(), nn.LayerNorm(8), nn.Linear(8, 3)).eval()
    example = (torch.randn(2, 6),)
    options = build_export_options(list(example), {"input_names": ["x"], "output_names": ["y"]})
    graphs = []
    for name in ("first.onnx", "second.onnx"):  # the first export of a process builds it
        path = tmp_path / name
        onnx_export._torch_onnx_export(model, example, path, options, False, dynamo=True, extra={})
        graphs.append([(n.op_type, list(n.input)) for n in onnx.load(str(path)).graph.node])
    plain = tmp_path / "plain.onnx"
    torch.onnx.export(
        model,
        example,
        str(plain),
        input_names=["x"],
        output_names=["y"],
        opset_version=onnx_export.DEFAULT_OPSET,
        dynamo=True,
    )
    assert graphs[0] == graphs[1]
    assert [n.op_type for n in onnx.load(str(plain)).graph.node] == [g[0] for g in graphs[0]]


def test_operators_registered_after_an_export_reach_the_next_registry() -> None:
    """torchlib's functions of ``quantized_decomposed`` ops enter the registry only once those
    ops are registered (``torch.ao.quantization`` imported): the first version kept the
    registry of the process's first export, without them, for every later export (a full run
    of the suite found it). A fresh process, where they are not registered yet."""
    script = """
from torch.onnx._internal.exporter import _registration
from skprotect_pytorch.export import onnx as onnx_export
name = "quantized_decomposed::quantize_per_tensor"
with onnx_export._torchlib_registry_reused():
    before = name in _registration.ONNXRegistry.from_torchlib(opset_version=18).functions
import torch.ao.quantization.fx._decomposed
with onnx_export._torchlib_registry_reused():
    after = name in _registration.ONNXRegistry.from_torchlib(opset_version=18).functions
print(before, after)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True"]


def _run(script: str, tmp_path) -> list[str]:
    """``script``'s printed words, run from a file in a fresh process (onnxscript reads the
    source of the functions it compiles)."""
    path = tmp_path / "script.py"
    path.write_text(script)
    done = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_the_second_export_of_a_process_reuses_the_first_ones_registry(tmp_path) -> None:
    """torch's first export registers operators of its own (``c10d_functional``, ``_dtensor``,
    55 in all) after the registry is built: keyed on every registered operator, the second
    export built it again, and a process protecting one model never reused it. A fresh
    process, as a CLI protection runs."""
    script = """
import torch
from torch import nn
from skprotect_pytorch.export import build_export_options
from skprotect_pytorch.export import onnx as onnx_export
import tempfile, pathlib
example = (torch.randn(2, 6),)
options = build_export_options(list(example), {"input_names": ["x"], "output_names": ["y"]})
with tempfile.TemporaryDirectory() as tmp:
    for name in ("a.onnx", "b.onnx"):
        onnx_export._torch_onnx_export(
            nn.Linear(6, 3).eval(), example, pathlib.Path(tmp) / name, options, False,
            dynamo=True, extra={},
        )
info = onnx_export._torchlib_functions.cache_info()
print(info.misses, info.hits)
"""
    assert _run(script, tmp_path) == ["1", "1"]


def test_functions_added_to_torchlib_after_an_export_reach_the_next_registry(tmp_path) -> None:
    """onnxscript's ``torch_op`` adds a function to torchlib with no operator registered: the
    next export's registry has it, as torch's own builder gives it."""
    script = """
import torch
from onnxscript import opset18 as op
from onnxscript.function_libs.torch_lib.registration import torch_op
from torch.onnx._internal.exporter import _registration
from skprotect_pytorch.export import onnx as onnx_export

@torch.library.custom_op("reuse_test::twice", mutates_args=())
def twice(x: torch.Tensor) -> torch.Tensor:
    return x * 2

with onnx_export._torchlib_registry_reused():
    before = "reuse_test::twice" in _registration.ONNXRegistry.from_torchlib().functions

@torch_op("reuse_test::twice", trace_only=True)
def twice_onnx(x):
    return op.Add(x, x)

with onnx_export._torchlib_registry_reused():
    after = "reuse_test::twice" in _registration.ONNXRegistry.from_torchlib().functions
print(before, after)
"""
    assert _run(script, tmp_path) == ["False", "True"]
