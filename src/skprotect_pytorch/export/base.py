"""The exporter interface, the format → exporter registry, and artifact verification.

Adding a format is one new module with one class decorated by :func:`register_exporter`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import inspect
import linecache
import logging
import re
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, Protocol, TypeVar, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn

from skruntime.backends.inductor import unpack_problem
from skruntime.backends.inputs import recorded_inputs
from skruntime.errors import BackendError

from ..errors import ExportError, InvalidArgumentError, VerificationError
from ..formats import ExportFormat
from ..logs import get_logger
from ..rounding import RTOL, within_rounding
from .options import ExportOptions

Runner = Callable[[Sequence[np.ndarray]], list[np.ndarray]]


@dataclass
class ExportReport:
    """What one export wrote, with which tool, and how long it took."""

    path: Path
    fmt: ExportFormat
    exporter: str  # e.g. "torch.onnx dynamo=True opset 18"
    seconds: float
    notes: list[str] = field(default_factory=list)


@runtime_checkable
class Exporter(Protocol):
    """Writes one format and runs what it wrote."""

    fmt: ExportFormat
    extension: str  # ".onnx", ".pt" (TorchScript) or ".pt2" (AOTInductor)

    def export(
        self,
        module: nn.Module,
        example_inputs: tuple[Tensor, ...],
        path: Path,
        options: ExportOptions,
        *,
        with_key: bool,
    ) -> ExportReport:
        """Export ``module`` (a KeyedModel when ``with_key``: the key is its last input)."""
        ...

    def load(self, path: Path, options: ExportOptions) -> Runner:
        """A callable running the artifact: numpy inputs (key last if any) → numpy outputs."""
        ...


_EXPORTERS: dict[ExportFormat, Exporter] = {}


def register_exporter(*formats: ExportFormat) -> Callable[[type], type]:
    """Class decorator: register ``cls(fmt)`` as the exporter of each of ``formats``."""

    def wrap(cls: type) -> type:
        for fmt in formats:
            _EXPORTERS[fmt] = cls(fmt)
        return cls

    return wrap


def registered_formats() -> list[ExportFormat]:
    return sorted(_EXPORTERS, key=lambda f: f.value)


def get_exporter(fmt: ExportFormat) -> Exporter:
    """The exporter of one single format."""
    if not isinstance(fmt, ExportFormat) or len(fmt.members) != 1:
        raise InvalidArgumentError(
            f"get_exporter needs one single ExportFormat, but got {fmt!r}. Iterate over "
            "ExportFormat.members of a combined value."
        )
    try:
        return _EXPORTERS[fmt]
    except KeyError:
        names = ", ".join(f.name for f in registered_formats()) or "none"
        raise ExportError(
            f"No exporter is registered for ExportFormat.{fmt.name}. Registered formats: "
            f"{names}. Choose one of these in model_export_formats."
        ) from None


def cuda_available() -> bool:
    return torch.cuda.is_available()


def require_cuda(fmt: ExportFormat) -> None:
    if not cuda_available():
        raise ExportError(
            f"ExportFormat.{fmt.name} requires CUDA, but torch.cuda.is_available() is False "
            f"(torch {torch.__version__}). Run the protection on a machine with an NVIDIA GPU and "
            "a CUDA build of torch, or leave the GPU formats out of model_export_formats."
        )


def check_example_inputs(
    example_inputs: Sequence[Any], options: ExportOptions, with_key: bool
) -> tuple[Tensor, ...]:
    names = options.names(with_key)
    if len(example_inputs) != len(names) or not all(isinstance(t, Tensor) for t in example_inputs):
        raise InvalidArgumentError(
            f"The exporter needs {len(names)} example tensor(s) ({', '.join(names)}), but got "
            f"{len(example_inputs)} value(s). Pass the model inputs"
            + (", then the key." if with_key else ".")
        )
    if with_key and example_inputs[-1].dim() != 1:
        raise InvalidArgumentError(
            f"The key example input must be a 1-D float32 tensor, but has shape "
            f"{tuple(example_inputs[-1].shape)}. Pass the static key vector as the last input."
        )
    return tuple(example_inputs)


def dataclass_fields(value: Any) -> dict[str, Any] | None:
    """A dataclass instance's fields, name -> value in their declared order (the order its
    outputs flatten in), or None for any other value (a dataclass class included)."""
    if not dataclasses.is_dataclass(value) or isinstance(value, type):
        return None
    return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}


def flatten_outputs(out: Any) -> list[Tensor]:
    """Model outputs (tensor, tuple/list, dict, dataclass, nested) as a flat list of tensors."""
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    elif (fields := dataclass_fields(out)) is not None:
        out = list(fields.values())
    if isinstance(out, list | tuple):
        return [t for item in out for t in flatten_outputs(item)]
    raise ExportError(
        f"The model returned a {type(out).__name__}; exported models must return tensors "
        "(or tuples, lists, dicts or dataclasses of tensors)."
    )


def to_numpy(tensors: Sequence[Tensor]) -> list[np.ndarray]:
    return [t.detach().cpu().numpy() for t in tensors]


def numpy_holds(dtype: torch.dtype) -> bool:
    """Whether NumPy has a type for ``dtype`` (not for ``bfloat16`` nor the float8 types):
    the protector checks every file, and onnxruntime is fed, on NumPy arrays."""
    try:
        torch.empty(0, dtype=dtype).numpy()
    except TypeError:
        return False
    return True


@contextlib.contextmanager
def collect_warnings(
    notes: list[str], *categories: type[Warning]
) -> Iterator[list[warnings.WarningMessage]]:
    """Record the (unique) warnings of ``categories`` raised inside the block as report notes;
    yields the list of every warning caught, filled when the block ends."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught
    seen: set[str] = set()
    for w in caught:
        if categories and not issubclass(w.category, categories):
            continue
        msg = str(w.message).strip().splitlines()[0][:200] if str(w.message).strip() else ""
        if msg and msg not in seen:
            seen.add(msg)
            notes.append(f"{w.category.__name__}: {msg}")


_BAKED_VALUE = "might cause the trace to be incorrect"


_TORCH_INPUT_CHECKS = (
    ("nn/functional.py", "if size_prods == 1:"),  # batch/group/instance norm: one value
    # F.embedding's padding_idx range checks: compare the (constant) weight's row count only
    ("nn/functional.py", "if padding_idx >= weight.size(0):"),
    ("nn/functional.py", "if padding_idx < -weight.size(0):"),
    ("nn/modules/instancenorm.py", "if input.size(feature_dim) != self.num_features:"),
    # RNN/LSTM/GRU: the input's features, the initial states' sizes against the batch
    ("nn/modules/rnn.py", "if self.input_size != input.size(-1):"),
    ("nn/modules/rnn.py", "if hx.size() != expected_hidden_size:"),
    (
        "nn/modules/transformer.py",
        "if not self.batch_first and src.size(1) != tgt.size(1) and is_batched:",
    ),
    (
        "nn/modules/transformer.py",
        "elif self.batch_first and src.size(0) != tgt.size(0) and is_batched:",
    ),
    (
        "nn/modules/transformer.py",
        "if src.size(-1) != self.d_model or tgt.size(-1) != self.d_model:",
    ),
    # MultiheadAttention (one the lock leaves as it is): the inputs' and weights' sizes
    ("nn/functional.py", "if embed_dim != embed_dim_to_check:"),
    ("nn/functional.py", "if head_dim * num_heads != embed_dim:"),
    ("nn/functional.py", "if key.shape[:2] != value.shape[:2]:"),
    ("nn/functional.py", "if key.shape != value.shape:"),
    ("nn/functional.py", "if attn_mask.shape != correct_2d_size:"),
    ("nn/functional.py", "if attn_mask.shape != correct_3d_size:"),
    ("nn/functional.py", "if w_q.shape != (Eq, Eq):"),
    ("nn/functional.py", "if w_k.shape != (Eq, Ek):"),
    ("nn/functional.py", "if w_v.shape != (Eq, Ev):"),
    ("nn/functional.py", "if b_q is not None and b_q.shape != (Eq,):"),
    ("nn/functional.py", "if b_k is not None and b_k.shape != (Eq,):"),
    ("nn/functional.py", "if b_v is not None and b_v.shape != (Eq,):"),
    # not a check: the head size, which the weights fix, as a float (need_weights=True)
    ("nn/functional.py", "q_scaled = q * math.sqrt(1.0 / float(E))"),
)
"""torch's own input checks whose traced value only decides whether to raise (or warn) for
an input the trace already passed, by file (within torch) and condition line: a GroupNorm,
InstanceNorm, BatchNorm without running statistics, nn.Transformer, an Embedding with a
positive padding_idx or an RNN/LSTM/GRU the lock leaves as it is made every model with one
refused in TorchScript, and so did a MultiheadAttention the lock leaves unlocked (excluded
by ``layer_filter``, skipped), whose head size torch also reads as a float. Named exactly:
another line of torch's (ConvTranspose2d's ``output_size``, whose output padding is a value
too), or a changed one, stays refused."""


def _in_torch(filename: str) -> str | None:
    """``filename`` within torch's package (``nn/functional.py``), or None if not torch's."""
    try:
        inside = Path(filename).resolve().relative_to(Path(torch.__file__).parent.resolve())
    except ValueError:
        return None
    return inside.as_posix()


def _torch_input_check(filename: str, lineno: int) -> bool:
    """Whether ``filename:lineno`` is one of :data:`_TORCH_INPUT_CHECKS`."""
    inside = _in_torch(filename)
    line = linecache.getline(filename, lineno).strip()
    return inside is not None and (inside, line) in _TORCH_INPUT_CHECKS


TORCHSCRIPT_INSTEAD = (
    "leave TORCHSCRIPT_CPU/TORCHSCRIPT_GPU out of model_export_formats and use ONNX or "
    "INDUCTOR_CPU/INDUCTOR_GPU (torch.export traces such values symbolically)"
)
"""What :func:`refuse_baked_values` advises for a value baked in torch's code by TorchScript."""


def refuse_baked_values(
    caught: Sequence[warnings.WarningMessage],
    exporter: str,
    detail: str = "",
    *,
    instead: str = TORCHSCRIPT_INSTEAD,
) -> None:
    """Raise :class:`ExportError` when a ``torch.jit`` trace turned a tensor into a Python value.

    A trace records tensor ops only: an ``if x.mean() > 0:``, ``int(t)``, ``t.item()`` or a loop
    over a tensor in ``forward`` becomes the constant it was for ``input_tensors``, so the
    artifact passes the verification on them and returns wrong outputs for other inputs.
    torch only warns (a ``TracerWarning``); a silently wrong artifact is worse than a refusal.
    torch's own input checks (:data:`_TORCH_INPUT_CHECKS`) only guard an error, and pass.
    ``instead`` says which exporter or format keeps a value of torch's code symbolic, for
    ``exporter``: the ONNX fallback's advice was to use ONNX.
    """
    for w in caught:
        text = str(w.message)
        if (
            issubclass(w.category, torch.jit.TracerWarning)
            and _BAKED_VALUE in text
            and not _torch_input_check(w.filename, w.lineno)
        ):
            raise ExportError(
                f"{exporter} traces the model, and its forward() turns a tensor into a Python "
                f"value at {w.filename}:{w.lineno} ({text.split('. ')[0]}): the artifact would "
                "keep the value it had for input_tensors as a constant and return wrong outputs "
                f"for other inputs.{detail} {_baked_value_advice(w.filename, instead)}"
            )


def _baked_value_advice(filename: str, instead: str) -> str:
    """What to do about a value baked at ``filename``: the user's code can compute it with
    tensor ops; torch's (a layer's own code: ConvTranspose2d's output_size, nn.Transformer's
    mask check) cannot be changed, and ``instead`` names what keeps it symbolic."""
    if _in_torch(filename) is not None:
        return (
            f"The line is torch's own code, in a layer the model calls: {instead}, or call "
            "the layer so that it needs no value (e.g. ConvTranspose2d without output_size)."
        )
    return (
        "Compute it with tensor ops instead (torch.where for a branch on values; the tensor "
        "itself rather than .item(), float() or int(); x.size(i) for a size), or leave this "
        "format out of model_export_formats."
    )


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


_QUIETED_LOGGERS = (
    # "torchvision is not installed" notices: we register no torchvision op
    "torch.onnx._internal.exporter._registration",
    # a requested opset below 18: torch's notice that it converts, then the converter's own
    # failure with a full traceback; the exporter checks the opset it got and falls back to
    # the legacy exporter, with the reason in the report's notes
    "torch.onnx._internal.exporter._compat",
    "onnxscript.version_converter",
)


_quiet_lock = threading.Lock()
_quiet_depth = 0  # quiet_upstream_warnings blocks running, in every thread
_quiet_undo: Callable[[], None] | None = None  # restores what the first of them changed


@contextlib.contextmanager
def quiet_upstream_warnings() -> Iterator[None]:
    """Hide torch's internal deprecation chatter and the ONNX exporters' log warnings that
    users cannot act on (:data:`_QUIETED_LOGGERS`). Exports running in several threads share
    one quieting, undone when the last ends: each restoring what it saw on entry left the
    loggers at ERROR and the filters changed when two overlapped."""
    global _quiet_depth, _quiet_undo
    with _quiet_lock:
        if not _quiet_depth:
            _quiet_undo = _quiet()
        _quiet_depth += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_depth -= 1
            if not _quiet_depth and _quiet_undo is not None:
                _quiet_undo()
                _quiet_undo = None


def _quiet() -> Callable[[], None]:
    """Quieten the upstream loggers and warnings; returns what undoes it."""
    loggers = [logging.getLogger(name) for name in _QUIETED_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    caught = warnings.catch_warnings()
    caught.__enter__()
    warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\..*")
    warnings.filterwarnings("ignore", message=".*dynamo=False.*", category=DeprecationWarning)

    def undo() -> None:
        caught.__exit__(None, None, None)
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)

    return undo


_ONE_AT_A_TIME = threading.RLock()
"""Held by every AOTInductor export (from its trace to its package), every ONNX export
(either exporter), every TorchScript export and a protection's own ``torch.export`` of the
model (naming its ``Dim.AUTO`` axes: ``dynamic_axes.export_reference``) for its whole run.
``torch.export`` and the compile keep their state for the whole process (the traced node's
metadata, the dispatch mode stack, Dynamo's caches that :func:`isolated_traces` resets, the
trace map that :func:`~.inductor.release_last_trace` clears, the GPU kernels' cubin paths),
and the legacy ONNX exporter its settings (``torch.onnx``'s opset and export mode), so two
exports in two threads at once failed: AOTInductor's ``torch.export`` with "Trying to pop
empty mode stack", or a compile with ``KeyError: 'custom'``; a dynamo ONNX export beside
another one, or beside an AOTInductor export, with "ProxyTorchDispatchMode slot already
occupied", "CURRENT_PATCHER is None in finally block" or "Unable to cast NotImplemented to
Tensor". An ONNX export also sets ``torch.onnx.is_in_onnx_export()`` for the whole process: a
TorchScript trace in another thread meanwhile took the lock's ONNX form of its channel mixing
(grouped 1x1 convs, :meth:`~..lock.channel_lock.BlockMix.apply_conv`) and shipped it instead
of the batched MatMul. One lock for all of them. Reentrant: an export started by a callback in
the same thread runs."""

_P = ParamSpec("_P")
_R = TypeVar("_R")


def one_at_a_time(export: Callable[_P, _R]) -> Callable[_P, _R]:
    """``export`` run holding :data:`_ONE_AT_A_TIME`: an export in another thread waits for
    its turn, and its report's time starts once its turn has come."""

    @functools.wraps(export)
    def in_turn(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with _ONE_AT_A_TIME:
            return export(*args, **kwargs)

    return in_turn


@contextlib.contextmanager
def isolated_traces() -> Iterator[None]:
    """Run a ``torch.export``-based export with Dynamo's caches cleared before and after.
    Guards of an earlier export in the same process (another model, or one with a fixed
    batch) were reused and failed the next one: a locked LSTM exported with a fixed batch made
    a later dynamic-batch export fail on a guard ``2 != N``. Clearing after, too, leaves none
    of ours to the user's own exports."""
    torch._dynamo.reset()
    try:
        yield
    finally:
        torch._dynamo.reset()


def first_line(err: BaseException) -> str:
    """``Type: first line of the message``, then the same for its cause (exporters wrap errors)."""
    parts = []
    seen: BaseException | None = err
    while seen is not None and len(parts) < 3:
        text = _ANSI.sub("", str(seen)).strip()
        parts.append(f"{type(seen).__name__}: {text.splitlines()[0][:300] if text else ''}")
        seen = seen.__cause__
    return " <- ".join(parts)


def signature_dynamic_shapes(
    module: nn.Module, shapes: tuple[Any, ...] | None
) -> tuple[Any, ...] | None:
    """Arrange per-input ``dynamic_shapes`` the way torch.export matches them to ``forward``.

    ``forward(*inputs)`` (our KeyedModel) binds every input to one argument, so torch.export wants
    ``((spec_0, spec_1, ...),)`` rather than ``(spec_0, spec_1, ...)``.
    """
    if shapes is None:
        return None
    params = inspect.signature(module.forward).parameters.values()
    fixed = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if not any(p.kind is p.VAR_POSITIONAL for p in params) or len(fixed) >= len(shapes):
        return tuple(shapes)
    return (*shapes[: len(fixed)], tuple(shapes[len(fixed) :]))


def as_wide(a: np.ndarray) -> np.ndarray:
    """``a`` in float64 (complex128 if complex), so that any outputs subtract: numpy refuses
    ``-`` on bools (a model returning ``y > 0``) and wraps unsigned integers around, and a
    complex output cast to float64 loses its imaginary part (which the checks then ignored)."""
    return a.astype(np.complex128 if a.dtype.kind == "c" else np.float64)


def _relative_error(a: np.ndarray, e: np.ndarray) -> float:
    if not np.array_equal(np.isnan(a), np.isnan(e)):
        return float("inf")
    mask = ~np.isnan(e)
    if not mask.any():
        return 0.0
    a, e = a[mask], e[mask]
    with np.errstate(invalid="ignore"):
        diff = np.where(a == e, 0.0, np.abs(a - e))  # equal infinities count as equal
    finite = np.abs(e[np.isfinite(e)])
    scale = max(float(finite.max()) if finite.size else 0.0, float(np.finfo(np.float32).tiny))
    err = float(np.max(diff)) / scale
    return err if not np.isnan(err) else float("inf")


def verify_artifact(
    exporter: Exporter,
    path: Path,
    options: ExportOptions,
    inputs: list[np.ndarray],
    expected: list[np.ndarray],
    rtol: float = RTOL,
) -> float:
    """Run the artifact on ``inputs`` and compare with ``expected``; return the max relative error.

    The relative error of an output is its largest absolute difference divided by the largest
    magnitude of the expected output (so near-zero elements do not dominate).
    """
    run = load_artifact(exporter, path, options)
    return check_outputs(exporter, path, run, inputs, expected, rtol)


def recorded_ranges(path: Path) -> list[Any] | None:
    """The dynamic axes' ranges that the model file at ``path`` records per input, which the
    runtime enforces (``[{"0": [2, 8]}, None]``); None when it records none (written before
    ranges were recorded, no declared range, or damaged)."""
    record = recorded_inputs(path)
    if not isinstance(record, list):
        return None
    ranges = [spec.get("ranges") if isinstance(spec, dict) else None for spec in record]
    return ranges if any(ranges) else None


def load_artifact(exporter: Exporter, path: Path, options: ExportOptions) -> Runner:
    """The artifact loaded once for several runs (loading an AOTInductor package takes time)."""
    try:
        return exporter.load(Path(path), options)
    except BackendError as err:  # the runtime's AOTInductor loader: no temporary folder usable
        raise VerificationError(f"{err} Then protect again.") from err
    except Exception as err:
        if advice := unpack_problem(err):  # torch's AOTInductor loader and TMPDIR
            raise VerificationError(
                f"The {exporter.fmt.name} artifact {path} {advice}, then protect again."
            ) from err
        raise VerificationError(
            f"The {exporter.fmt.name} artifact {path} could not be loaded ({first_line(err)}). "
            "Check the export log; re-export the model."
        ) from err


def check_outputs(
    exporter: Exporter,
    path: Path,
    run: Runner,
    inputs: list[np.ndarray],
    expected: list[np.ndarray],
    rtol: float = RTOL,
    exact: Callable[[], list[np.ndarray] | None] | None = None,
) -> float:
    """:func:`verify_artifact` with the artifact already loaded as ``run``. ``exact``: the
    original's outputs in float64 (on first need), against which an output beyond ``rtol``
    still passes where it is float32 rounding (:mod:`..rounding`: outputs that cancel)."""
    try:
        actual = run(inputs)
    except Exception as err:
        raise VerificationError(
            f"The {exporter.fmt.name} artifact {path} could not be run on the example inputs "
            f"({first_line(err)}). Check the export log; re-export the model."
        ) from err
    if len(actual) != len(expected):
        raise VerificationError(
            f"The {exporter.fmt.name} artifact {path} returned {len(actual)} output(s), expected "
            f"{len(expected)}. Check that the model's outputs are tensors in a fixed order."
        )
    worst = 0.0
    for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
        a, e = np.asarray(a), np.asarray(e)
        if a.shape != e.shape:
            raise VerificationError(
                f"Output {i} of the {exporter.fmt.name} artifact {path} has shape {a.shape}, "
                f"expected {e.shape}. A dimension was probably fixed at export: declare it in "
                "dynamic_shapes."
            )
        if e.size == 0:
            continue
        err = _relative_error(as_wide(a), as_wide(e))
        worst = max(worst, err)
        if err > rtol and not _rounding_only(a, e, i, exact):
            raise VerificationError(
                f"Output {i} of the {exporter.fmt.name} artifact {path} differs from the "
                f"reference: max relative error {err:.3g} > tolerance {rtol:g}. The exported "
                "model does not reproduce the reference outputs; report this with the logs."
            )
    return worst


def _rounding_only(
    actual: np.ndarray,
    expected: np.ndarray,
    index: int,
    exact: Callable[[], list[np.ndarray] | None] | None,
) -> bool:
    """Whether output ``index`` differs from ``expected`` by float32 rounding only: no further
    from the float64 outputs than :data:`..rounding.AMPLIFICATION` times ``expected`` is."""
    wide = exact() if exact is not None else None
    if wide is None or index >= len(wide) or wide[index].shape != expected.shape:
        return False
    x = as_wide(wide[index])
    got = _relative_error(as_wide(actual), x)
    own = _relative_error(as_wide(expected), x)
    if not within_rounding(got, own):
        return False
    get_logger().info(
        "Output %d differs from the original by float32 rounding only: %.3g from its float64 "
        "outputs, where the original's own float32 outputs are %.3g from them (they cancel)",
        index,
        got,
        own,
    )
    return True


class InputsCopied(nn.Module):
    """``module`` run on copies of the inputs (by position) that its forward changes in place.

    A traced or compiled artifact gets its inputs without a copy (the runtime wraps the caller's
    numpy arrays with ``torch.from_numpy``), so ``x.mul_(2)`` in ``forward`` would change the
    caller's arrays; the copies are exported only for the inputs that need them."""

    def __init__(self, module: nn.Module, copied: Sequence[int]) -> None:
        super().__init__()
        self.module = module
        self.copied = frozenset(copied)

    def forward(self, *inputs: Tensor) -> Any:
        return self.module(*(x.clone() if i in self.copied else x for i, x in enumerate(inputs)))


class VersionedCopies:
    """Copies of some tensors, for a run that must say which of them it changed in place: a
    tensor's version counter counts every in-place op on it or its views, even one that leaves
    the values as they were (``x.clamp_(0)`` on positive examples)."""

    def __init__(self, tensors: Sequence[Tensor]) -> None:
        # made as normal tensors even under the caller's torch.inference_mode(), whose
        # inference tensors have no version counter (reading it raises)
        with torch.inference_mode(False):
            self.tensors = [t.detach().clone() for t in tensors]
        self._versions = [t._version for t in self.tensors]

    def changed(self) -> list[int]:
        """Positions of the copies changed in place since they were made."""
        pairs = zip(self.tensors, self._versions, strict=True)
        return [i for i, (t, version) in enumerate(pairs) if t._version != version]


def mutated_inputs(module: nn.Module, args: Sequence[Tensor]) -> list[int]:
    """Positions of the inputs that ``module``'s forward changes in place, found by one run on
    copies (:class:`VersionedCopies`)."""
    copies = VersionedCopies(args)
    try:
        with torch.no_grad():
            module(*copies.tensors)
    except Exception as err:
        raise ExportError(
            f"The model failed on copies of its example inputs ({first_line(err)}). Check that "
            "it runs with input_tensors."
        ) from err
    return copies.changed()


def without_input_mutation(
    module: nn.Module,
    args: Sequence[Tensor],
    names: Sequence[str],
    known: Sequence[int] | None = None,
) -> tuple[nn.Module, list[str]]:
    """``module``, wrapped in :class:`InputsCopied` when its forward changes inputs in place,
    and the report note that says so (none otherwise: other models export unchanged).
    ``known``: those inputs' positions from a run the caller made (else found by one run)."""
    if known is not None and any(not 0 <= i < len(args) for i in known):
        raise InvalidArgumentError(
            f"ExportOptions.mutated_inputs {list(known)} names inputs beyond the {len(args)} "
            "example input(s). Give positions in the example inputs (the key last), or None "
            "to find them by a run."
        )
    mutated = list(known) if known is not None else mutated_inputs(module, args)
    if not mutated:
        return module, []
    listed = ", ".join(repr(names[i]) if i < len(names) else f"#{i}" for i in mutated)
    note = (
        f"forward() changes input(s) {listed} in place: the artifact copies them first, so that "
        "it never changes the caller's arrays"
    )
    return InputsCopied(module, mutated).eval(), [note]


def on_device(module: nn.Module, device: str) -> nn.Module:
    """``module`` itself when its parameters and buffers are all on ``device``, else a copy
    moved there: the caller's model is never moved. The protector hands the GPU exporters its
    locked model already on the GPU; copied all the same, it was held twice in GPU memory
    through each GPU export."""
    target = torch.empty(0, device=device).device  # "cuda" as the tensors say it: "cuda:0"
    if all(t.device == target for t in (*module.parameters(), *module.buffers())):
        return module
    return copy.deepcopy(module).to(device)


class DeviceExporter:
    """Shared set-up of the torch exporters that come as a CPU and a GPU format."""

    gpu_format: ExportFormat

    def __init__(self, fmt: ExportFormat) -> None:
        self.fmt = fmt
        self.device = "cuda" if fmt is self.gpu_format else "cpu"

    def prepare(
        self,
        module: nn.Module,
        example_inputs: tuple[Tensor, ...],
        path: Path,
        options: ExportOptions,
        with_key: bool,
    ) -> tuple[nn.Module, tuple[Tensor, ...], Path, list[str]]:
        """Check the inputs, have the module and inputs on the exporter's device
        (:func:`on_device`), copy the inputs that forward changes in place
        (:func:`without_input_mutation`, or ``options.mutated_inputs``), create the folder; the
        last item is the report's notes."""
        args = check_example_inputs(example_inputs, options, with_key)
        if self.device == "cuda":
            require_cuda(self.fmt)
        module = on_device(module, self.device)
        args = tuple(a.to(self.device) for a in args)
        module, notes = without_input_mutation(
            module.eval(), args, options.names(with_key), options.mutated_inputs
        )
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return module, args, path, notes
