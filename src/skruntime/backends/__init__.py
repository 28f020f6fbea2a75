"""Runtime backends, one module per format family behind :class:`Backend`.

The registry names each backend by import path and imports it on first use, so loading an ONNX
model never imports torch (the ``skprotect[runtime]`` install has no torch at all).
"""

from __future__ import annotations

import importlib

from ..errors import SkRuntimeError
from .base import Backend, BackendOptions, ModelFile

__all__ = ["Backend", "BackendOptions", "ModelFile", "backend_class", "registered_formats"]

_BACKENDS: dict[str, str] = {
    "onnx": "skruntime.backends.onnxruntime:OnnxRuntimeBackend",
    "torchscript_cpu": "skruntime.backends.torchscript:TorchScriptBackend",
    "torchscript_gpu": "skruntime.backends.torchscript:CudaTracedTorchScriptBackend",
    "inductor_cpu": "skruntime.backends.inductor:InductorBackend",
    "inductor_gpu": "skruntime.backends.inductor:InductorBackend",
}


def registered_formats() -> list[str]:
    return list(_BACKENDS)


def backend_class(fmt: str) -> type[Backend]:
    """The backend class for a format slug; imports its module (and its framework) lazily."""
    try:
        target = _BACKENDS[fmt]
    except KeyError:
        raise SkRuntimeError(
            f"No runtime backend for format '{fmt}'. Registered formats: {', '.join(_BACKENDS)}."
        ) from None
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        framework = "onnxruntime" if fmt == "onnx" else "torch"
        if err.name is None or err.name.split(".")[0] != framework:
            raise
        raise SkRuntimeError(
            f"The '{fmt}' backend needs {framework}, which is not installed ({err}). Install it "
            f"(pip install 'skprotect[runtime]' for onnxruntime, torch==2.13.0 for torch formats)."
        ) from err
    return getattr(module, class_name)
