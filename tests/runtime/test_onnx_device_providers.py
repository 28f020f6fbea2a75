"""``device`` and ``session_options["providers"]`` must agree for ONNX models. onnxruntime
follows the provider list alone, so a contradiction ran silently elsewhere than asked:
``device="cpu"`` with CUDAExecutionProvider on the GPU, ``device="cuda:1"`` with device_id 0
(or none, which means 0) on GPU 0. onnxruntime-gpu is simulated: CUDAExecutionProvider is
added to the available providers, and only the options are checked (no session is built)."""

from __future__ import annotations

from typing import Any

import onnxruntime as ort
import pytest

from skruntime.backends import BackendOptions
from skruntime.backends.onnxruntime import OnnxRuntimeBackend
from skruntime.errors import BackendError

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


@pytest.fixture
def with_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    available = ort.get_available_providers()
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, *available])


def check(device: str, providers: list[Any]) -> None:
    options = BackendOptions(device=device, session_options={"providers": providers})
    OnnxRuntimeBackend.check_options(options)


@pytest.mark.usefixtures("with_cuda")
@pytest.mark.parametrize("providers", [[CUDA], [CPU, (CUDA, {"device_id": 0})]])
def test_a_gpu_provider_with_device_cpu_is_refused(providers: list[Any]) -> None:
    with pytest.raises(BackendError) as info:
        check("cpu", providers)
    assert str(info.value) == (
        "device='cpu', but session_options['providers'] lists CUDAExecutionProvider, which runs "
        "on a GPU: pass device='cuda' (or 'cuda:N') to run there, or leave it out of the list "
        "to run on the CPU."
    )


@pytest.mark.usefixtures("with_cuda")
@pytest.mark.parametrize(
    ("provider", "why"),
    [
        ((CUDA, {"device_id": 0}), "device_id 0"),
        ((CUDA, {"device_id": "2"}), "device_id '2'"),
        (CUDA, "no device_id, which means GPU 0"),
    ],
)
def test_a_device_id_other_than_the_device_s_index_is_refused(provider: Any, why: str) -> None:
    with pytest.raises(BackendError) as info:
        check("cuda:1", [provider, CPU])
    found = 0 if "2" not in why else 2
    assert str(info.value) == (
        f"device='cuda:1', but session_options['providers'] gives CUDAExecutionProvider {why}: "
        f"give it the option device_id 1, or pass device='cuda:{found}' (or device='cuda', "
        "which follows the list)."
    )


@pytest.mark.usefixtures("with_cuda")
@pytest.mark.parametrize(
    ("device", "providers"),
    [
        ("cuda:1", [(CUDA, {"device_id": 1, "use_tf32": "0"}), CPU]),
        ("cuda:1", [(CUDA, {"device_id": "1"})]),
        ("cuda:0", [CUDA, CPU]),
        ("cuda", [(CUDA, {"device_id": 3})]),  # no index: the list says which GPU
        ("cpu", [CPU]),
    ],
)
def test_a_device_and_providers_that_agree_are_accepted(device: str, providers: list) -> None:
    check(device, providers)


@pytest.mark.usefixtures("with_cuda")
@pytest.mark.parametrize("device_id", ["x", -1, True, 1.5])
def test_a_device_id_that_is_not_a_gpu_index_is_refused(device_id: object) -> None:
    with pytest.raises(BackendError, match="the device_id of CUDAExecutionProvider must be a GPU"):
        check("cuda:1", [(CUDA, {"device_id": device_id})])


def test_without_onnxruntime_gpu_the_missing_provider_is_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where CUDAExecutionProvider is not available (the CPU onnxruntime package), that is the
    error, whatever the device."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CPU])
    for device in ("cpu", "cuda:1"):
        with pytest.raises(BackendError, match="names CUDAExecutionProvider, which this onnx"):
            check(device, [CUDA])
