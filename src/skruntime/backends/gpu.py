"""CUDA checks and the GPU settings that make GPU results match CPU results.

Imports no torch at module level (torch is imported inside the functions), so the ONNX Runtime
backend may use :data:`ORT_CUDA_FP32_OPTIONS` without torch installed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import BackendError

ORT_CUDA_FP32_OPTIONS = {"use_tf32": "0"}
"""onnxruntime ``CUDAExecutionProvider`` options for full float32 MatMul/Gemm and cuDNN
convolutions: its ``use_tf32`` defaults to on (``CUDAExecutionProviderInfo::use_tf32{true}``)."""


def apply_gpu_determinism() -> None:
    """Make float32 GPU results match CPU results within tolerance (the seed document's
    "GPU support for protected model" note). Called by the torch backends on CUDA devices.

    A protected model computes the same function as the original only up to float32 rounding:
    the key's permutations and scales cancel exactly in exact arithmetic. TF32 (the default for
    cuDNN convolutions on Ampere and newer GPUs, and for matmuls where a user enabled it) keeps
    only 10 mantissa bits, a relative error near 1e-3 per product, which the lock's extra
    matmul/scale steps compound: the protected model's GPU output then differs from the
    original's (and from the CPU's) by more than the 1e-4 tolerance the protector verifies. So:

    - ``torch.backends.cuda.matmul.allow_tf32 = False`` and
      ``torch.set_float32_matmul_precision("highest")``: full float32 matmuls (cuBLAS);
    - ``torch.backends.cudnn.allow_tf32 = False``: full float32 convolutions (cuDNN);
    - ``torch.backends.cudnn.benchmark = False``: no per-shape autotuning, whose choice of
      algorithm (and so rounding) can change from one process to the next.

    These are **process-wide** torch settings: they also apply to any other torch code in the
    process (which then runs float32 GPU math a little slower, but exactly as on pre-TF32
    GPUs). ONNX Runtime's CUDA execution provider is *not* covered by these settings and
    enables TF32 by default (``use_tf32`` is true since onnxruntime 1.18): pass
    :data:`ORT_CUDA_FP32_OPTIONS` in its provider options.
    """
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.benchmark = False


GpuSettings = tuple[bool, bool, str, bool]
"""The process-wide torch settings :func:`apply_gpu_determinism` changes, as
:func:`gpu_settings` reads them."""


def gpu_settings() -> GpuSettings:
    """The current values of the settings :func:`apply_gpu_determinism` changes, for
    :func:`restore_gpu_settings`."""
    import torch

    return (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.get_float32_matmul_precision(),
        torch.backends.cudnn.benchmark,
    )


def restore_gpu_settings(saved: GpuSettings) -> None:
    """Put back the settings :func:`gpu_settings` read."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = saved[0]
    torch.backends.cudnn.allow_tf32 = saved[1]
    torch.set_float32_matmul_precision(saved[2])
    torch.backends.cudnn.benchmark = saved[3]


@contextmanager
def gpu_float32() -> Iterator[None]:
    """:func:`apply_gpu_determinism` inside a block only, then the caller's settings again: for
    code (the protector's GPU verification) that must not change a user's process for good."""
    saved = gpu_settings()
    apply_gpu_determinism()
    try:
        yield
    finally:
        restore_gpu_settings(saved)


def require_cuda(what: str, device: str) -> None:
    """Raise BackendError unless torch can use ``device`` (``"cuda"`` or ``"cuda:N"``)."""
    import torch

    if not torch.cuda.is_available():
        raise BackendError(
            f"device={device!r}: the {what} format needs a CUDA GPU, but "
            f"torch.cuda.is_available() is False (torch {torch.__version__}). Run it on a "
            "machine with an NVIDIA GPU and a CUDA build of torch, or load the model's CPU "
            "format with device='cpu'."
        )
    index = cuda_index(device)
    count = torch.cuda.device_count()
    if index >= count:
        raise BackendError(
            f"device={device!r} does not exist: torch sees {count} CUDA device(s) "
            f"(cuda:0 to cuda:{count - 1}). Choose one of these."
        )


def cuda_index(device: str) -> int:
    """The GPU index of ``"cuda"`` (the current device, 0 unless changed) or ``"cuda:N"``."""
    _, _, index = device.partition(":")
    if not index:
        import torch

        return torch.cuda.current_device() if torch.cuda.is_available() else 0
    if not index.isdigit():
        raise BackendError(f"device must be 'cuda' or 'cuda:N', but got {device!r}.")
    return int(index)
