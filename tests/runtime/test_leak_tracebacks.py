"""A failed call or load leaves no key in the local variables its traceback keeps.

Crash reporters record the local variables of every frame of a traceback (``sentry-sdk`` by
default; ``traceback.TracebackException(capture_locals=True)``). Until 2026-12-07 a call that
failed in the backend (onnxruntime out of memory, a torch error, Ctrl-C) kept the session key in
four locals of two frames (``checked``, ``feed``, ``inputs``, ``x``: 161 of the 314 distinct
values of a 459-value key were in the report, the permutation indices whole), and a load refused
for a damaged or swapped ``mev_*.bin`` kept the key-encryption key, which decrypts every model
key of the application, in two (``kek`` of ``read_mev`` and of the key source). The frames
below the runtime's own are now cleared of their locals (file, line and function stay)."""

from __future__ import annotations

import base64
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from skprotect_pytorch.protect import SkProtectorPyTorch
from skruntime import BackendError, KeyFileError, SkRuntime

EF = SkProtectorPyTorch.ExportFormat
EP = SkProtectorPyTorch.ExportPlatform
MARK = np.float32(4096.5)  # printed "4096.5" by numpy, "4096.5000" by torch


def report(err: BaseException) -> str:
    """What a crash reporter recording local variables writes."""
    return "".join(traceback.TracebackException.from_exception(err, capture_locals=True).format())


def protect(platform: object, fmt: object) -> Path:
    torch.manual_seed(0)
    protector = SkProtectorPyTorch(application_name=f"app_{platform.value}")
    protector.protect_new_model(
        nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval(),
        "m",
        [torch.randn(2, 6)],
        model_export_formats=fmt,
        deployment_platform=platform,
    )
    return protector.outputs_dir


class _Held:
    """A value whose ``repr`` does not show it."""

    def __init__(self, value: bytes) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "<held>"


class _Failing:
    """Stands for a framework that fails during a call (out of memory, a driver error)."""

    def run(self, *args: object) -> None:
        raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory")

    __call__ = run


FAILING = [("onnx", "_session"), ("torchscript_cpu", "_model")]
"""Formats, and the attribute of their backend that runs the model."""


@pytest.mark.parametrize(("fmt", "attribute"), FAILING)
def test_a_failed_call_keeps_no_key_value_in_its_frames(
    workdir: Path, fmt: str, attribute: str
) -> None:
    outputs = protect(EP.TXT, EF.ONNX | EF.TORCHSCRIPT_CPU)
    model = SkRuntime(outputs).load("m", fmt)
    model._key[:] = MARK  # recognisable wherever a frame's locals print the key
    setattr(model._backend, attribute, _Failing())
    with pytest.raises(BackendError, match="Failed to allocate memory") as err:
        model(np.zeros((2, 6), np.float32))
    text = report(err.value)
    assert "4096.5" not in text
    assert "_invoke" in text and "in run" in text  # the frames are kept, their locals not
    model.close()


def _fails_with_a_local() -> None:
    mine = "the caller's own local"  # noqa: F841  (kept for the report)
    raise ValueError("the caller's own error")


def test_the_callers_own_chained_exception_keeps_its_locals(workdir: Path) -> None:
    """A model called while the caller handles its own exception: that exception, chained to
    the failed call's, keeps the locals of its frames (only the call's frames are cleared)."""
    model = SkRuntime(protect(EP.TXT, EF.ONNX)).load("m")
    model._key[:] = MARK
    model._backend._session = _Failing()
    try:
        _fails_with_a_local()
    except ValueError:
        with pytest.raises(BackendError) as err:
            model(np.zeros((2, 6), np.float32))
    text = report(err.value)
    assert "4096.5" not in text
    chained: BaseException | None = err.value
    while chained is not None and not isinstance(chained, ValueError):
        chained = chained.__context__
    assert chained is not None
    frames = traceback.walk_tb(chained.__traceback__)
    assert any(frame.f_locals.get("mine") == "the caller's own local" for frame, _ in frames)
    model.close()


def test_a_refused_encrypted_key_file_keeps_no_kek_in_the_frames(workdir: Path) -> None:
    outputs = protect(EP.LINUX, EF.ONNX)
    kek_file = SkProtectorPyTorch(application_name="app_LINUX").state.export_kek(
        workdir / "kek.b64"
    )
    kek = base64.b64decode(kek_file.read_bytes())
    held = _Held(kek)  # this test's own frame is in the report too: its locals must not show it
    del kek
    mev = outputs / "m" / "onnx" / "mev_m_onnx.bin"
    data = bytearray(mev.read_bytes())
    data[-1] ^= 1  # damaged in transfer: the GCM tag fails
    mev.write_bytes(bytes(data))
    with pytest.raises(KeyFileError, match="cannot be decrypted") as err:
        SkRuntime(outputs, kek=held.value).load("m")
    text = report(err.value)
    kek = held.value
    for form in (repr(kek), kek.hex(), base64.b64encode(kek).decode()):
        assert form not in text
    assert "read_mev" in text
