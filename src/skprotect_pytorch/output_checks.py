"""What a model returns, checked on the original's outputs before any lock or export: every
format must return it and every file must be checked against it, so an output one of them cannot
carry (``None`` beside TorchScript or AOTInductor, a structure ``torch.jit.trace`` cannot
return, a dtype NumPy lacks) is refused at once, saying where it is (``output['loss']``)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

from .errors import InvalidArgumentError
from .export.base import dataclass_fields, numpy_holds
from .formats import ExportFormat

__all__ = [
    "output_leaves",
    "refuse_none_outputs",
    "refuse_numpyless_outputs",
    "refuse_untraceable_outputs",
    "untraceable",
]


def output_leaves(outputs: Any, where: str = "output") -> Iterator[tuple[str, Any]]:
    """The leaves of the (nested) tuples, lists, dicts and dataclasses of ``outputs``, each with
    where it is: ``output[0]``, ``output['loss']``, ``output.logits``."""
    if isinstance(outputs, dict):
        items = [(f"{where}[{k!r}]", v) for k, v in outputs.items()]
    elif (fields := dataclass_fields(outputs)) is not None:
        items = [(f"{where}.{k}", v) for k, v in fields.items()]
    elif isinstance(outputs, list | tuple):
        items = [(f"{where}[{i}]", v) for i, v in enumerate(outputs)]
    else:
        yield where, outputs
        return
    for name, value in items:
        yield from output_leaves(value, name)


def refuse_none_outputs(outputs: Any, formats: Iterable[ExportFormat]) -> None:
    """Refuse, before any lock or export, ``None`` among the outputs when a format other than
    ONNX is asked: ONNX files leave ``None`` out (and so does the check of the outputs), but
    ``torch.jit.trace`` refuses it and an AOTInductor file returns it, which neither the
    protector's check nor the runtime can read; both failed only after the exports."""
    others = [f.name for f in formats if f is not ExportFormat.ONNX]
    where = [name for name, value in output_leaves(outputs) if value is None]
    if others and where:
        raise InvalidArgumentError(
            f"The model's outputs hold None at {', '.join(where)}. ONNX files leave None out, "
            f"but {', '.join(others)} files can return tensors only. Return only tensors from "
            "forward() (drop the None entries, e.g. in a wrapper module), or protect for "
            "ExportFormat.ONNX only."
        )


def _dict_value_kind(value: Any) -> int | None:
    """The TorchScript type of a dict value that ``torch.jit.trace`` returns: -1 for a tensor,
    ``n`` for a tuple of ``n`` tensors (a dataclass is traced as the tuple of its fields:
    :func:`~.lock.keyed_model.plain_outputs`), ``None`` for any other value."""
    if not isinstance(value, dict) and (fields := dataclass_fields(value)) is not None:
        value = tuple(fields.values())
    if isinstance(value, torch.Tensor):
        return -1
    if isinstance(value, tuple) and all(isinstance(t, torch.Tensor) for t in value):
        return len(value)
    return None


def untraceable(value: Any, where: str = "output") -> str | None:
    """Where in ``value`` (the model's outputs) ``torch.jit.trace`` cannot return it, or
    ``None``: it returns tensors, tuples of such values, non-empty lists of tensors and
    non-empty dicts with string keys whose values are all tensors or all tuples of as many
    tensors (TorchScript types a list or dict by one element type). Measured on torch 2.13:
    a dict mixing a tensor and a tuple, a dict of lists or dicts, a list of tuples and empty
    containers fail the trace. A dataclass (not a dict) is traced as the tuple of its fields
    (:func:`~.lock.keyed_model.plain_outputs`)."""
    if isinstance(value, torch.Tensor):
        return None
    if isinstance(value, tuple):
        inner = (untraceable(v, f"{where}[{i}]") for i, v in enumerate(value))
        return next((w for w in inner if w is not None), None)
    if isinstance(value, list):
        ok = value and all(isinstance(v, torch.Tensor) for v in value)
        return None if ok else where
    if isinstance(value, dict):
        kinds = {_dict_value_kind(v) for v in value.values()}
        keys = all(isinstance(k, str) for k in value)
        return None if keys and len(kinds) == 1 and None not in kinds else where
    if (fields := dataclass_fields(value)) is not None:
        inner = (untraceable(v, f"{where}.{k}") for k, v in fields.items())
        return next((w for w in inner if w is not None), None)
    return where


def refuse_untraceable_outputs(outputs: Any, formats: Iterable[ExportFormat]) -> None:
    """Refuse, before any lock or export, outputs that ``torch.jit.trace`` cannot return
    (:func:`untraceable`) when a TorchScript format is asked: it failed after the lock and
    the other exports, with "TorchScript tracing failed (RuntimeError: output 1 ({y: [...)".
    """
    traced = [
        f.name for f in formats if f in (ExportFormat.TORCHSCRIPT_CPU, ExportFormat.TORCHSCRIPT_GPU)
    ]
    where = untraceable(outputs) if traced else None
    if where is not None:
        raise InvalidArgumentError(
            f"The model's outputs hold a structure at {where} that {', '.join(traced)} "
            "(torch.jit.trace) cannot return: TorchScript outputs are tensors, tuples, "
            "non-empty lists of tensors and non-empty dicts with string keys whose values are "
            "all tensors (or all tuples of as many tensors). Return such a structure from "
            "forward() (e.g. flatten it into a tuple in a wrapper module), or choose ONNX or "
            "INDUCTOR formats only."
        )


def refuse_numpyless_outputs(outputs: Any) -> None:
    """Refuse outputs of a dtype NumPy lacks: the protector checks every file, and the runtime
    returns outputs, as NumPy arrays (torch's ``.numpy()`` raised a bare TypeError)."""
    where = [
        f"{name} ({str(value.dtype).removeprefix('torch.')})"
        for name, value in output_leaves(outputs)
        if isinstance(value, torch.Tensor) and not numpy_holds(value.dtype)
    ]
    if where:
        raise InvalidArgumentError(
            f"The model returns {', '.join(where)}: a dtype NumPy cannot hold, so no protected "
            "file could be checked against it. Return float32 (or float16) from "
            "forward(), e.g. y.float(), then protect again."
        )
