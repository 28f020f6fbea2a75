"""bfloat16 inputs of an ONNX model: onnxruntime's Python API takes numpy arrays, and numpy has
no bfloat16. A torch bfloat16 tensor failed in ``tensor.numpy()`` with torch's raw TypeError
("Got unsupported ScalarType BFloat16"), an ml_dtypes bfloat16 array inside onnxruntime
("Numpy_type 256 can't be converted to MLDataType"); float16 and float32 are fed as given."""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from skruntime.backends import BackendOptions
from skruntime.backends.onnxruntime import OnnxRuntimeBackend
from skruntime.config import InputSpec, OutputSpec
from skruntime.errors import InputError
from skruntime.runtime import LoadedModel

KEY = np.full(3, 2.0, np.float32)
ONNX_TYPES = {"bfloat16": TensorProto.BFLOAT16, "float16": TensorProto.FLOAT16}


def cast_model(tmp_path: Path, dtype: str) -> LoadedModel:
    """``y = float(x) * key``, x ``(2, 3)`` of ``dtype``."""
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["xf", "key_vector"], ["y"]),
        ],
        "net",
        [
            helper.make_tensor_value_info("x", ONNX_TYPES[dtype], [2, 3]),
            helper.make_tensor_value_info("key_vector", TensorProto.FLOAT, [3]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "net.onnx")
    backend = OnnxRuntimeBackend(tmp_path / "net.onnx", BackendOptions())
    spec = InputSpec("x", (2, 3), dtype)
    return LoadedModel("net", "onnx", [spec], [OutputSpec("y")], KEY.copy(), backend)


@pytest.mark.parametrize(
    "x",
    [torch.ones(2, 3, dtype=torch.bfloat16), np.ones((2, 3), ml_dtypes.bfloat16)],
    ids=["tensor", "ml_dtypes"],
)
def test_a_bfloat16_input_of_an_onnx_model_is_one_clear_input_error(
    tmp_path: Path, x: object
) -> None:
    with cast_model(tmp_path, "bfloat16") as model, pytest.raises(InputError) as info:
        model(x)
    assert str(info.value).startswith(
        "Input 'x' is bfloat16, which the onnx backend cannot feed: onnxruntime's Python API "
        "takes numpy arrays, and numpy has no bfloat16"
    )
    assert "Load a torch format of the model" in str(info.value)


def test_float16_is_fed_without_a_conversion(tmp_path: Path) -> None:
    """The values reach the model as float16 (3.14159 is 3.140625 there): nothing converted."""
    x = torch.full((2, 3), 3.14159, dtype=torch.float16)
    with cast_model(tmp_path, "float16") as model:
        y = model(x)
        np.testing.assert_array_equal(y, np.full((2, 3), 2 * 3.140625, np.float32))
        with pytest.raises(InputError, match=r"has dtype float32, but the configuration expects"):
            model(x.float())  # float32 is not silently narrowed to float16
