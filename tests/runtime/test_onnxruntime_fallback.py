"""The ONNX Runtime backend under onnxruntime 1.20's provider fallback, simulated on the
installed onnxruntime: ``enable_fallback=False`` ignored, a GPU provider raising as the session
is built (the way a missing cuDNN does) on a machine without one."""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path
from typing import Any

import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from onnxruntime.capi import onnxruntime_inference_collection as collection

from skruntime.backends.base import BackendOptions, ModelFile
from skruntime.backends.onnxruntime import OnnxRuntimeBackend
from skruntime.errors import BackendError

CAUSE = "libcudnn.so.9: cannot open shared object file: No such file or directory"


@pytest.fixture
def model() -> ModelFile:
    """A one-node ONNX model, as the bytes a verified file gives the backend."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    data = proto.SerializeToString()
    return ModelFile(Path("net.onnx"), data, hashlib.sha256(data).hexdigest())


@pytest.fixture
def onnxruntime_1_20_with_failing_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """CUDA listed as available, raising when a session is built with it, and the
    ``enable_fallback`` keyword not read, as in onnxruntime 1.20 (which needs no patch)."""
    init = collection.Session.__init__
    if "enable_fallback" in inspect.signature(init).parameters:
        monkeypatch.setattr(
            collection.Session, "__init__", lambda self, enable_fallback=True: init(self, True)
        )
    create = collection.InferenceSession._create_inference_session

    def cuda_fails(self: Any, providers: Any, *args: Any, **kwargs: Any) -> Any:
        if any("CUDAExecutionProvider" in str(p) for p in providers or ()):
            self._fallback_providers = ["CPUExecutionProvider"]  # as onnxruntime sets it first
            raise RuntimeError(CAUSE)
        return create(self, providers, *args, **kwargs)

    monkeypatch.setattr(collection.InferenceSession, "_create_inference_session", cuda_fails)
    available = ort.get_available_providers()
    monkeypatch.setattr(
        ort, "get_available_providers", lambda: ["CUDAExecutionProvider", *available]
    )


@pytest.mark.usefixtures("onnxruntime_1_20_with_failing_cuda")
@pytest.mark.parametrize(
    "options",
    [
        BackendOptions(device="cuda"),
        BackendOptions(device="cuda", session_options={"providers": ["CUDAExecutionProvider"]}),
    ],
    ids=["device", "providers"],
)
def test_the_cause_of_a_gpu_provider_failing_to_start_is_in_the_error(
    model: ModelFile, options: BackendOptions, capsys: pytest.CaptureFixture[str]
) -> None:
    """onnxruntime 1.20 printed the provider's error to stdout and rebuilt the session on the
    CPU; the refusal that followed said only that CUDA could not be created, not why."""
    with pytest.raises(BackendError) as caught:
        OnnxRuntimeBackend(model, options)
    message = str(caught.value)
    assert "with providers CUDAExecutionProvider" in message
    assert f": {CAUSE}. " in message
    assert "GPU providers need the CUDA and cuDNN libraries" in message
    assert "Falling back" not in capsys.readouterr().out


def test_a_provider_dropped_without_an_exception_points_to_onnxruntime_s_warning(
    model: ModelFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A provider onnxruntime drops with only a logged warning (the cause is on stderr, written
    by its C++ logger, which Python cannot read back): the refusal says where to look."""
    available = ort.get_available_providers()
    monkeypatch.setattr(
        ort, "get_available_providers", lambda: ["CUDAExecutionProvider", *available]
    )
    with (
        pytest.warns(UserWarning, match="not in available provider names"),
        pytest.raises(BackendError) as caught,
    ):
        OnnxRuntimeBackend(model, BackendOptions(device="cuda"))
    assert "the session would run on CPUExecutionProvider only. onnxruntime's warning on " in str(
        caught.value
    )
    assert "stderr says why (e.g. a CUDA or cuDNN library it could not load). GPU" in str(
        caught.value
    )
