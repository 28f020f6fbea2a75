"""ONNX Runtime backend: ``.onnx`` files on the CPU provider, or CUDA when asked and present.

The session is built from the verified bytes (:class:`~.base.ModelFile`), not from the path.
The ranges of the dynamic axes are read from the model's metadata property
:data:`~.inputs.INPUTS_METADATA` (files written before it was recorded have none)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from ..errors import BackendError
from .base import MAX_ONNX_BYTES, BackendOptions, ModelFile, as_numpy
from .gpu import ORT_CUDA_FP32_OPTIONS
from .inputs import INPUTS_METADATA, parse_specs

__all__ = ["OnnxRuntimeBackend"]


def _check_size(path: Path, size: int) -> None:
    """Refuse a file of ``size`` bytes over :data:`MAX_ONNX_BYTES` with what to do, instead of
    onnxruntime's protobuf parse error (:data:`~.base.SizeCheck`: run before it is read)."""
    if size > MAX_ONNX_BYTES:
        raise BackendError(
            f"{path} is {size:,} bytes, over the {MAX_ONNX_BYTES:,} bytes (2 GiB) one ONNX "
            "file can hold (protobuf's limit), so onnxruntime cannot load it; skprotect never "
            "writes such a file. Re-deploy the file written by skprotect; protect a model this "
            "large to a TorchScript or AOTInductor format, which have no such limit."
        )


def _given_providers(providers: object) -> list[Any]:
    """``session_options["providers"]`` checked: a non-empty list of names (or ``(name,
    options)`` pairs) of providers this onnxruntime has. onnxruntime itself would split a string
    into letters, and fall back to the CPU for an unknown name with only a printed warning."""
    available = ort.get_available_providers()
    usage = (
        "session_options['providers'] must be a non-empty list of execution provider names "
        f"(or (name, options) pairs), e.g. ['CPUExecutionProvider'], but got {providers!r}."
    )
    if not isinstance(providers, list | tuple) or not providers:
        raise BackendError(usage)
    names = [p[0] if isinstance(p, tuple) and len(p) == 2 else p for p in providers]
    if not all(isinstance(n, str) for n in names):
        raise BackendError(usage)
    unknown = [n for n in names if n not in available]
    if unknown:
        raise BackendError(
            f"session_options['providers'] names {', '.join(unknown)}, which this onnxruntime "
            f"does not have; available: {', '.join(available)}. Use those names (GPU providers "
            "need the matching onnxruntime package, e.g. onnxruntime-gpu)."
        )
    return list(providers)


def _names(providers: Sequence[Any]) -> list[str]:
    """Provider names of a provider list whose entries are names or ``(name, options)``."""
    return [p[0] if isinstance(p, tuple) else p for p in providers]


_GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


def _gpu_advice(names: Sequence[str]) -> str:
    """What to do when a GPU provider in ``names`` cannot start ("" when none is there)."""
    if not any(n in _GPU_PROVIDERS for n in names):
        return ""
    return (
        " GPU providers need the CUDA and cuDNN libraries of the versions this onnxruntime-gpu "
        "was built for (onnxruntime's install page lists them) on the library path: install "
        "those, or ask for the CPU (device='cpu')."
    )


def _check_created(created: Sequence[str], asked: Sequence[str], path: os.PathLike[str]) -> None:
    """Refuse a session that lacks an asked provider: onnxruntime drops a provider it cannot
    create (CUDA listed as available but its libraries missing or broken) with only a warning
    and runs on the CPU, while the caller asked for, and would report, a GPU run. The reason is
    in that warning only, which onnxruntime's C++ logger writes to stderr: it is pointed to."""
    missing = [n for n in asked if n not in created]
    if missing:
        raise BackendError(
            f"onnxruntime could not create the execution provider(s) {', '.join(missing)} for "
            f"{path}: the session would run on {', '.join(created)} only. onnxruntime's warning "
            "on stderr says why (e.g. a CUDA or cuDNN library it could not load)."
            + (
                _gpu_advice(missing)
                or " Install what that provider needs, or leave it out of "
                "session_options['providers']."
            )
        )


def _gpu_of(provider: Any) -> tuple[int, str] | None:
    """The GPU a GPU provider's list entry runs on, and why (its ``device_id`` option, or
    onnxruntime's default 0); None for options that are not a dict (onnxruntime refuses them)."""
    options = provider[1] if isinstance(provider, tuple) else {}
    if not isinstance(options, Mapping):
        return None
    if "device_id" not in options:
        return 0, "no device_id, which means GPU 0"
    given = options["device_id"]
    text = str(given)
    if isinstance(given, bool) or not text.isdigit():
        raise BackendError(
            f"session_options['providers']: the device_id of {provider[0]} must be a GPU index "
            f"(0, 1, ...), but got {given!r}."
        )
    return int(text), f"device_id {given!r}"


def _check_device_agrees(device: str, providers: Sequence[Any]) -> None:
    """Refuse a provider list that contradicts ``device``. onnxruntime follows the list alone,
    so a contradiction ran silently elsewhere than asked: ``device="cpu"`` with
    ``CUDAExecutionProvider`` on the GPU, ``device="cuda:1"`` with ``device_id`` 0 (or none,
    which means 0) on GPU 0, a GPU device without a GPU provider on the CPU. ``"cuda"``
    without an index names no GPU: the list's ``device_id`` says which."""
    names = _names(providers)
    gpu = [n for n in names if n in _GPU_PROVIDERS]
    if device == "cpu":
        if gpu:
            raise BackendError(
                f"device='cpu', but session_options['providers'] lists {', '.join(gpu)}, which "
                f"{'runs' if len(gpu) == 1 else 'run'} on a GPU: pass device='cuda' (or "
                f"'cuda:N') to run there, or leave {'it' if len(gpu) == 1 else 'them'} out of "
                "the list to run on the CPU."
            )
        return
    if "CUDAExecutionProvider" not in names:
        raise BackendError(
            f"device={device!r} asks for a GPU, but session_options['providers'] is {names}: "
            "add CUDAExecutionProvider to the list, or leave out one of the two."
        )
    _, _, index = device.partition(":")
    for provider, name in zip(providers, names, strict=True):
        found = _gpu_of(provider) if index and name in _GPU_PROVIDERS else None
        if found is not None and found[0] != int(index):
            raise BackendError(
                f"device={device!r}, but session_options['providers'] gives {name} "
                f"{found[1]}: give it the option device_id {index}, or pass "
                f"device='cuda:{found[0]}' (or device='cuda', which follows the list)."
            )


def _providers(options: BackendOptions) -> list[Any]:
    if "providers" in options.session_options:
        providers = _given_providers(options.session_options["providers"])
        _check_device_agrees(options.device, providers)
        return providers
    if options.device == "cpu":
        return ["CPUExecutionProvider"]
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        raise BackendError(
            f"device={options.device!r} needs onnxruntime's CUDAExecutionProvider, but this "
            f"onnxruntime has only {', '.join(available)}. Install onnxruntime-gpu (and a "
            "matching CUDA), or use device='cpu'."
        )
    _, _, index = options.device.partition(":")
    # the CUDA EP enables TF32 by default, which moves results beyond the protector's tolerance
    cuda_options = {**ORT_CUDA_FP32_OPTIONS, **({"device_id": int(index)} if index else {})}
    return [("CUDAExecutionProvider", cuda_options), "CPUExecutionProvider"]


def _usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (``taskset``'s or a container's cpuset
    share, which ``os.cpu_count()`` ignores), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no sched_getaffinity (macOS, Windows)
        return os.cpu_count() or 1


def _session_options(options: BackendOptions) -> ort.SessionOptions:
    so = ort.SessionOptions()
    if options.intra_op_threads is not None:
        so.intra_op_num_threads = options.intra_op_threads
        if options.intra_op_threads > _usable_cores():
            # more threads than cores, spinning between jobs (the default), starve each other:
            # 1024 threads on 2 busy cores took 18 s to build a tiny model's session, not 0.3 s
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if options.inter_op_threads is not None:
        so.inter_op_num_threads = options.inter_op_threads
    extra = {k: v for k, v in options.session_options.items() if k != "providers"}
    for option, param in (
        ("intra_op_num_threads", "intra_op_threads"),
        ("inter_op_num_threads", "inter_op_threads"),
    ):
        if option in extra and getattr(options, param) is not None:  # one would be ignored
            raise BackendError(
                f"The thread count is given twice: {param}={getattr(options, param)} and "
                f"session_options[{option!r}]={extra[option]!r}; pass only {param}."
            )
    unknown = sorted(k for k in extra if k.startswith("_") or not hasattr(so, k))
    if unknown:
        known = sorted(a for a in dir(so) if not a.startswith("_") and not callable(getattr(so, a)))
        raise BackendError(
            f"Unknown onnxruntime session option(s) {', '.join(unknown)}. Valid: 'providers' and "
            f"the attributes of onnxruntime.SessionOptions: {', '.join(known)}."
        )
    for name, value in extra.items():
        default = getattr(so, name)
        try:
            setattr(so, name, value)
        except (TypeError, AttributeError, ValueError):  # pybind's message lists signatures
            kind = type(default).__name__
            if type(default).__module__ != "builtins" and hasattr(ort, kind):
                kind = f"onnxruntime.{kind}"  # e.g. onnxruntime.GraphOptimizationLevel
            raise BackendError(
                f"Session option {name}={value!r} was refused by onnxruntime: it takes a value "
                f"of type {kind} (its default is {default!r})."
            ) from None
    return so


class _Session(ort.InferenceSession):
    """An ``InferenceSession`` that never rebuilds itself on other providers. onnxruntime 1.20,
    the oldest this package takes, ignores ``enable_fallback=False`` (1.32 reads it): a GPU
    provider raising while the session was built (its cuDNN missing) was printed and the session
    rebuilt on the CPU, so the refusal that followed lacked the cause; a provider failing in
    ``run()`` rebuilt it too."""

    def _create_inference_session(self, *args: Any, **kwargs: Any) -> None:
        self.disable_fallback()  # read by 1.20's __init__ and run() when a provider raises
        super()._create_inference_session(*args, **kwargs)


_OUT_OF_MEMORY = ("Failed to allocate memory", "out of memory", "bad_alloc")
"""What onnxruntime's messages say when an allocation failed (its CPU arena, CUDA, C++)."""


def _run_advice(message: str) -> str:
    """What to do after onnxruntime failed to run a model with ``message``: an allocation
    that failed needs a smaller batch or more memory, anything else is in the inputs or the
    file."""
    if any(text in message for text in _OUT_OF_MEMORY):
        return (
            "It ran out of memory: run fewer inputs at once (a smaller batch), or on a machine "
            "(or GPU) with more free memory."
        )
    return (
        "Check the inputs' shapes and dtypes against the model's inputs (the key last); if "
        "they are right, re-deploy the file written by skprotect."
    )


class OnnxRuntimeBackend:
    """One ``onnxruntime.InferenceSession``; inputs are fed by the session's own input names."""

    wants_numpy = True
    """LoadedModel converts torch tensors to numpy before calling :meth:`run`."""

    check_size = staticmethod(_check_size)
    """Refuse a file over the ONNX size limit; the runtime runs it before reading the file."""

    @staticmethod
    def check_options(options: BackendOptions) -> None:
        """Refuse invalid providers, session options or device, before any file is read."""
        _providers(options)
        _session_options(options)

    def __init__(self, model: ModelFile | str | os.PathLike[str], options: BackendOptions) -> None:
        providers = _providers(options)
        so = _session_options(options)
        model = ModelFile.of(model, _check_size)
        path = model.path
        asked = _names(providers)
        try:
            # no fallback (_Session): a GPU provider that fails to start raises here, instead of
            # onnxruntime printing the error and rebuilding the session on the CPU; nor does
            # run() when the provider fails during a call
            session = _Session(
                model.data, sess_options=so, providers=providers, enable_fallback=False
            )
        except Exception as e:  # onnxruntime raises its own pybind exception types
            raise BackendError(
                f"onnxruntime could not load {path} with providers {', '.join(asked)}: {e}. "
                "Re-deploy the file written by skprotect, and check the providers/session "
                f"options.{_gpu_advice(asked)}"
            ) from None
        # onnxruntime keeps the bytes for the life of the session, only to rebuild it on another
        # provider (set_providers(), or the fallback _Session turns off): the bytes go, so that a
        # session holds its model once, like one loaded by path
        session._model_bytes = None
        _check_created(session.get_providers(), asked, path)
        self._session = session
        try:  # onnxruntime does not check that the file's texts are UTF-8, Python's str does
            self.input_names = [i.name for i in session.get_inputs()]
            self.output_names = [o.name for o in session.get_outputs()]
            raw = session.get_modelmeta().custom_metadata_map.get(INPUTS_METADATA)
        except UnicodeDecodeError:
            raise BackendError(
                f"{path} holds input, output or metadata names or values that are not UTF-8 "
                "text: it is damaged. Re-deploy the file written by skprotect."
            ) from None
        self.providers = session.get_providers()
        self._path = path
        self.input_record: list[dict] | None = (
            None if raw is None else parse_specs(raw, path.name)[0]
        )
        """The file's :data:`~.inputs.INPUTS_METADATA` record, parsed (key last); None without
        it. The runtime compares it with the configuration when it loads the file."""

    def run(self, inputs: Sequence[Any]) -> list[Any]:
        """Run once. Inputs are numpy arrays (others are converted); onnxruntime itself copies
        non-contiguous arrays, so contiguous arrays of the right dtype are fed without a copy."""
        session = self._session
        if session is None:
            raise BackendError(f"The onnxruntime session of {self._path} is closed.")
        if len(inputs) != len(self.input_names):
            raise BackendError(
                f"{self._path.name} takes {len(self.input_names)} inputs (the key last), but "
                f"got {len(inputs)}."
            )
        feed = dict(zip(self.input_names, inputs, strict=True))
        for name, x in feed.items():
            if type(x) is not np.ndarray:
                feed[name] = as_numpy(x)
        try:
            return session.run(None, feed)
        except Exception as e:  # onnxruntime's pybind exception types
            text = str(e).strip()
            raise BackendError(
                f"onnxruntime failed to run {self._path.name}: {text}. {_run_advice(text)}"
            ) from None

    def close(self) -> None:
        self._session = None
