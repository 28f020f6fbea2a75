"""Clear errors (or warnings, where the mapping is unambiguous) for the pre-0.2 protection API."""

from __future__ import annotations

import warnings
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


def translate_kwargs(kwargs: dict[str, Any], where: str) -> dict[str, Any]:
    """Map renamed pre-0.1 keyword arguments (with a DeprecationWarning); reject removed ones."""
    out = {}
    for name, value in kwargs.items():
        if name in _REMOVED_KWARGS:
            raise RemovedAPIError(_REMOVED_KWARGS[name])
        if name in _RENAMED_KWARGS:
            new = _RENAMED_KWARGS[name]
            warnings.warn(
                f"'{name}' was renamed '{new}' in v0.1.0; update the call to {where}.",
                DeprecationWarning,
                stacklevel=3,
            )
            out[new] = value
            continue
        raise TypeError(f"{where}() got an unexpected keyword argument '{name}'.")
    return out


def removed_protect() -> RemovedAPIError:
    return RemovedAPIError(
        "SkProtectorPyTorch.protect() was removed in v0.1.0: call protect_new_model() for a "
        "model protected for the first time, or protect_updated_model() to replace one."
    )
