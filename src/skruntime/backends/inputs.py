"""The inputs a protected model file records about itself (:data:`INPUTS_METADATA`): written by
the protector's exporters with :func:`input_specs`, read by every backend with
:func:`parse_specs`. torch-free, so that the ONNX backend reads them without torch.

The dynamic axes' ranges are recorded here, not in the configuration: its readers refuse unknown
fields, so a new field there would make every older runtime refuse the whole configuration,
while older runtimes ignore the fields of this record they do not know. The configuration's
SHA-256 of the model file (platform version 1 and later) covers the record, and
``SkRuntime.load()`` refuses a record that disagrees with the configuration's inputs.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import BackendError
from .onnx_props import metadata_props

__all__ = [
    "INPUTS_METADATA",
    "Ranges",
    "input_specs",
    "key_commitment_of",
    "parse_specs",
    "range_problem",
    "range_text",
    "recorded_commitment",
    "recorded_inputs",
    "spec_name",
    "spec_ranges",
]

INPUTS_METADATA = "skprotect.inputs"
"""Package metadata key (AOTInductor), extra file (TorchScript) and model metadata property
(ONNX): JSON list, one object per input, key included, in call order: ``{"shape": [int | null],
"dtype": str}`` where ``null`` marks a dynamic axis and ``dtype`` is torch's name without
``torch.`` (``"float32"``). Optional fields: ``"name"`` (the graph input name), ``"key": true``
on the key input, and ``"ranges": {"<axis>": [lowest, highest | null]}``, the sizes a dynamic
axis takes (``null``: no highest size), given only for axes with a bound: the declared ones,
narrowed in files written through ``torch.export`` to the sizes it exported the axis for.
The key's spec may carry ``"key_commitment"`` (64 hex digits), the
:func:`skruntime.keyfile.key_commitment` of the key, checked against TXT key files."""

Ranges = Mapping[int | str, Sequence[int | None]]
"""Dynamic axis (an int, or its JSON text) -> (lowest size, highest size or None) of one input:
a spec's ``"ranges"`` as stored, or as :func:`spec_ranges` gives it."""


def _bound(value: Any) -> int | None:
    """A declared size bound as an int; None for torch's ``int_oo`` (no bound) or none given."""
    if isinstance(value, int) or getattr(value, "is_Integer", False):
        return int(value)
    return None


def declared_range(dim: Any) -> tuple[int, int | None] | None:
    """The sizes ``dim`` (a ``torch.export.Dim``, a derived one, or a hint such as
    ``Dim.AUTO(min=2)``) declares, or None when it declares no bound."""
    low, high = _bound(getattr(dim, "min", None)) or 0, _bound(getattr(dim, "max", None))
    return (low, high) if low > 0 or high is not None else None


def input_specs(
    args: Sequence[Any],
    dynamic: Sequence[Mapping[int, Any] | None] | None,
    names: Sequence[str] | None = None,
    key_name: str | None = None,
    key_commitment: str | None = None,
) -> list[dict]:
    """Dtype, shape (``None`` for dynamic axes) and declared ranges of each example input (torch
    tensors), key included.

    With ``names``, each spec also carries its input name; the input named ``key_name`` is
    flagged ``"key": true`` so that loaders can say "key" in their messages, and carries
    ``key_commitment`` when given.
    """
    specs = []
    for i, t in enumerate(args):
        axes = (dynamic[i] if dynamic and i < len(dynamic) else None) or {}
        shape = [
            None if axis in axes and axes[axis] is not None else n for axis, n in enumerate(t.shape)
        ]
        spec: dict[str, Any] = {"shape": shape, "dtype": str(t.dtype).removeprefix("torch.")}
        ranges = {
            str(axis): list(bounds)
            for axis, dim in sorted(axes.items())
            if shape[axis] is None and (bounds := declared_range(dim)) is not None
        }
        if ranges:
            spec["ranges"] = ranges
        if names is not None and i < len(names):
            spec["name"] = names[i]
            if key_name is not None and names[i] == key_name:
                spec["key"] = True
                if key_commitment is not None:
                    spec["key_commitment"] = key_commitment
        specs.append(spec)
    return specs


def _valid_ranges(ranges: object, shape: list) -> bool:
    """Whether ``ranges`` is a spec's ``"ranges"`` object for an input of ``shape``."""
    if not isinstance(ranges, dict):
        return False
    for axis, bounds in ranges.items():
        if not (isinstance(axis, str) and axis.isdigit() and int(axis) < len(shape)):
            return False
        if shape[int(axis)] is not None or not isinstance(bounds, list) or len(bounds) != 2:
            return False
        low, high = bounds
        if isinstance(low, bool) or not isinstance(low, int) or low < 0:
            return False
        if high is not None and (isinstance(high, bool) or not isinstance(high, int)):
            return False
        if high is not None and high < low:
            return False
    return True


def _valid_commitment(value: object) -> bool:
    """Whether ``value`` is a spec's ``"key_commitment"``: absent, or 64 lowercase hex digits."""
    return value is None or (isinstance(value, str) and bool(re.fullmatch(r"[0-9a-f]{64}", value)))


def key_commitment_of(specs: Sequence[Mapping[str, Any]] | None) -> str | None:
    """The key commitment a parsed record carries; None when it has none (files protected
    before it was recorded)."""
    return next((s["key_commitment"] for s in specs or () if s.get("key_commitment")), None)


def recorded_commitment(source: Path | bytes) -> str | None:
    """The key commitment that the model file ``source`` (its path or its bytes) records; None
    when it records none (written before commitments were recorded, or damaged: one that is
    not 64 hex digits, which the backend refuses as it reads the record, is none here)."""
    record = recorded_inputs(source)
    if not isinstance(record, list) or not all(isinstance(s, dict) for s in record):
        return None
    commitment = key_commitment_of(record)
    return commitment if _valid_commitment(commitment) else None


def recorded_inputs(source: Path | bytes) -> Any:
    """The input record (:data:`INPUTS_METADATA`, parsed, unchecked) that the model file
    ``source`` (its path or its bytes) carries, read without loading the model (no framework,
    no torch); None when it has none or cannot be read. In a TorchScript or AOTInductor
    archive, its extra file or metadata; in an ONNX file, a metadata property
    (:mod:`.onnx_props`)."""
    file = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        if zipfile.is_zipfile(file):
            with zipfile.ZipFile(file) as archive:
                for name in archive.namelist():
                    if name.endswith(f"/extra/{INPUTS_METADATA}"):
                        return json.loads(archive.read(name))
                    if name.endswith("_metadata.json"):  # AOTInductor's, the record a value
                        metadata = json.loads(archive.read(name))
                        raw = metadata.get(INPUTS_METADATA) if isinstance(metadata, dict) else None
                        return json.loads(raw) if isinstance(raw, str) else None
            return None
        raw = metadata_props(source).get(INPUTS_METADATA)
        return None if raw is None else json.loads(raw)
    # RuntimeError: JSON nested too deeply (RecursionError), a member encrypted or compressed
    # in a way zipfile cannot read (NotImplementedError); zlib.error: a damaged member
    except (OSError, ValueError, RuntimeError, EOFError, zipfile.BadZipFile, zlib.error):
        return None


def parse_specs(raw: str, source: str) -> tuple[list[dict], list[str], str | None]:
    """Validate :data:`INPUTS_METADATA` JSON; return the specs, input names and the key's name."""
    try:
        specs = json.loads(raw)
        ok = isinstance(specs, list) and all(
            isinstance(s, dict)
            and isinstance(s.get("dtype"), str)
            and isinstance(s.get("shape"), list)
            and all(
                n is None or (isinstance(n, int) and not isinstance(n, bool) and n >= 0)
                for n in s["shape"]
            )
            and _valid_ranges(s.get("ranges", {}), s["shape"])
            and _valid_commitment(s.get("key_commitment"))
            for s in specs
        )
    except (ValueError, TypeError, RecursionError):  # RecursionError: nested too deeply
        ok = False
    if not ok:
        raise BackendError(
            f"{source} has unreadable {INPUTS_METADATA} metadata, so its inputs cannot be "
            "checked. Re-deploy the file written by skprotect."
        )
    names = [spec_name(s, i) for i, s in enumerate(specs)]
    key_name = next((n for n, s in zip(names, specs, strict=True) if s.get("key")), None)
    return specs, names, key_name


def spec_name(spec: Mapping[str, Any], index: int) -> str:
    """A parsed spec's input name, ``#<index>`` when it records none."""
    return str(spec.get("name") or f"#{index}")


def spec_ranges(spec: Mapping[str, Any]) -> dict[int, tuple[int, int | None]]:
    """A parsed spec's ranges by int axis; ``{}`` when it records none (files written before
    ranges were recorded, axes declared without bounds)."""
    return {int(axis): (low, high) for axis, (low, high) in spec.get("ranges", {}).items()}


def range_text(low: int, high: int | None) -> str:
    """A declared range as messages write it: ``"2 to 8"``, ``"at least 2"``."""
    return f"at least {low}" if high is None else f"{low} to {high}"


def range_problem(
    shape: Sequence[int], ranges: Ranges, dim_names: Mapping[int, str] | None = None
) -> str | None:
    """Why an input of ``shape`` is outside its declared :data:`Ranges` and what to do (to
    follow the input's name: "has size ..."), or None when every dynamic axis is in range.
    ``dim_names``: the axes' dynamic dimension names, for the message.

    The model was exported and checked for those sizes only, and an AOTInductor package's
    compiled code may rely on them (its guards, index widths and kernels were chosen for them;
    it checks nothing itself)."""
    for axis, (low, high) in ranges.items():
        axis = int(axis)
        size = shape[axis]
        if low <= size and (high is None or size <= high):
            continue
        dim = (dim_names or {}).get(axis)
        fit = (
            f"Split the call into calls of at most {high}"
            if high is not None and size > high
            else f"Pad it to {low} (e.g. repeat a slice) and drop the extra outputs"
        )
        return (
            f"has size {size} on axis {axis}{f' (dynamic dimension {dim!r})' if dim else ''}, "
            f"but the model was protected for sizes {range_text(low, high)} on that axis (its "
            "dynamic_shapes, or the sizes torch.export exported it for), and was exported and "
            "checked for those sizes only. "
            f"{fit}, or protect the model again with a wider range for that axis "
            "(torch.export.Dim(..., min=..., max=...))."
        )
    return None
