""".onnx files over protobuf's 2 GiB: one clear BackendError, not onnxruntime's parse error.

onnxruntime fed the bytes of a 2.21 GB file raised "RuntimeError: narrowing_error" (after
printing an "EP Error" banner), reported as "onnxruntime could not load ... narrowing_error.
Re-deploy the file written by skprotect, and check the providers/session options." The limit
is ``MAX_ONNX_BYTES``, made small here so that no test allocates 2 GiB."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from skruntime.backends import BackendOptions
from skruntime.backends import onnxruntime as ort_backend
from skruntime.errors import BackendError


def small_model(folder: Path) -> Path:
    """``y = x * key``: a valid file, so that only its size can be refused."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "key_vector"], ["y"])],
        "net",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info("key_vector", TensorProto.FLOAT, [3]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = folder / "net.onnx"
    onnx.save(model, path)
    return path


def test_a_file_over_the_limit_is_refused_before_onnxruntime_parses_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = small_model(tmp_path)
    size = path.stat().st_size
    monkeypatch.setattr(ort_backend, "MAX_ONNX_BYTES", size - 1)

    def no_session(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("onnxruntime was handed a file over the ONNX size limit")

    monkeypatch.setattr(ort_backend, "_Session", no_session)
    with pytest.raises(BackendError) as info:
        ort_backend.OnnxRuntimeBackend(path, BackendOptions())
    assert str(info.value) == (
        f"{path} is {size:,} bytes, over the {size - 1:,} bytes (2 GiB) one ONNX file can hold "
        "(protobuf's limit), so onnxruntime cannot load it; skprotect never writes such a "
        "file. Re-deploy the file written by skprotect; protect a model this large to a "
        "TorchScript or AOTInductor format, which have no such limit."
    )


def test_a_file_at_the_limit_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = small_model(tmp_path)
    monkeypatch.setattr(ort_backend, "MAX_ONNX_BYTES", path.stat().st_size)
    backend = ort_backend.OnnxRuntimeBackend(path, BackendOptions())
    assert backend.input_names == ["x", "key_vector"]
