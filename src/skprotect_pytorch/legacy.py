"""Clear errors (or warnings, where the mapping is unambiguous) for the pre-0.2 protection API."""

from __future__ import annotations

import warnings
from collections.abc import Collection
from typing import Any

from .errors import RemovedAPIError

_REMOVED_KWARGS = {
    "output_path": (
        "The constructor argument 'output_path' was removed in v0.1.0: files are saved in "
        "./outputs/<application_name>. Run the script from the folder where outputs/ should be."
    ),
    "debug_logs": (
        "The argument 'debug_logs' was removed in v0.1.0: pass save_logs=True to the "
        "SkProtectorPyTorch constructor instead."
    ),
    "layer_types_to_protect": (
        "'layer_types_to_protect' was removed in v0.1.0: use layer_filter, e.g. "
        "layer_filter=lambda name, module: isinstance(module, torch.nn.Linear)."
    ),
    "filtered_layers": (
        "'filtered_layers' was removed in v0.1.0: use layer_filter, e.g. "
        "layer_filter=lambda name, module: name not in ['fc']."
    ),
}
_RENAMED_KWARGS = {
    "list_input_tensor": "input_tensors",
    "protected_model_format": "model_export_formats",
}
LEGACY_FORMAT_NAMES = {
    "TORCHSCRIPT": "TORCHSCRIPT_CPU or TORCHSCRIPT_GPU",
    "TORCH": "TORCHSCRIPT_CPU or TORCHSCRIPT_GPU",
    "INDUCTOR": "INDUCTOR_CPU or INDUCTOR_GPU",
    "AOTINDUCTOR": "INDUCTOR_CPU or INDUCTOR_GPU",
}


def _refusal(name: str, where: str) -> Exception:
    """The error for a keyword argument ``where`` does not take: a removed pre-0.1 argument
    names its replacement, any other is unexpected (as Python says it)."""
    if name in _REMOVED_KWARGS:
        return RemovedAPIError(_REMOVED_KWARGS[name])
    return TypeError(f"{where}() got an unexpected keyword argument '{name}'.")


def refuse_kwargs(kwargs: dict[str, Any], where: str) -> None:
    """Refuse the constructor's extra keyword arguments: the renamed ones belong to the
    protect calls, and taking them here would drop them with a misleading warning."""
    if kwargs:
        raise _refusal(next(iter(kwargs)), where)


def translate_kwargs(
    kwargs: dict[str, Any], where: str, given: Collection[str] = ()
) -> dict[str, Any]:
    """Map renamed pre-0.1 keyword arguments of a protect call (with a DeprecationWarning);
    reject removed ones, and pre-0.2 string values of ``protected_model_format``.

    ``given``: the parameters the call passed under their new names; an old name given with
    its new one is refused, as Python refuses one argument passed twice: taking either value
    would silently drop the other."""
    out = {}
    for name, value in kwargs.items():
        new = _RENAMED_KWARGS.get(name)
        if new is None:
            raise _refusal(name, where)
        if new == "model_export_formats" and isinstance(value, str):
            raise RemovedAPIError(
                f"{name}={value!r} is a pre-0.2 value: pass "
                "model_export_formats=SkProtectorPyTorch.ExportFormat.<FORMAT> values "
                "combined with '|'."
            )
        if new in given:
            raise TypeError(
                f"{where}() got both '{name}' and its new name '{new}' (renamed in v0.1.0): "
                f"pass only {new}=."
            )
        warnings.warn(
            f"'{name}' was renamed '{new}' in v0.1.0; update the call to {where}.",
            DeprecationWarning,
            stacklevel=4,
        )
        out[new] = value
    return out


def removed_protect() -> RemovedAPIError:
    return RemovedAPIError(
        "SkProtectorPyTorch.protect() was removed in v0.1.0: call protect_new_model() for a "
        "model protected for the first time, or protect_updated_model() to replace one."
    )
