"""Export options shared by every format: input/output names, dynamic dimensions, format extras.

``build_export_options`` turns the public arguments (``input_tensors``, ``onnx_params``,
``dynamic_shapes``, ``inductor_configs``) into one validated, frozen :class:`ExportOptions`.
Dynamic dimensions can be given either as torch.export ``dynamic_shapes`` or as ONNX-style
``onnx_params["dynamic_axes"]``; when only ``dynamic_axes`` is given, the torch.export shapes are
derived from it so that every format (ONNX, TorchScript, AOTInductor) honours the same dimensions.
"""

from __future__ import annotations

import difflib
import inspect
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from skruntime.backends.inputs import INPUTS_METADATA, declared_range, input_specs

from ..errors import InvalidArgumentError

DEFAULT_KEY_NAME = "key_vector"
DEFAULT_OPSET = 18

#: The seed API's default ``onnx_params`` (read-only: copy it before changing anything).
DEFAULT_ONNX_PARAMS: Mapping[str, Any] = MappingProxyType(
    {"input_names": ["input.1"], "output_names": ["output.1"], "dynamic_axes": None}
)

# torch.onnx.export arguments skprotect sets itself; a user value would break the artifact.
_RESERVED_ONNX_KEYS = {
    "model": "the model is the locked model",
    "args": "the example inputs are input_tensors plus the key",
    "f": "the file path is chosen by skprotect",
    "kwargs": "models are called with positional inputs only",
    "external_data": "the protected model is always written as one self-contained .onnx file",
    "dynamic_shapes": None,  # handled, not reserved: merged with the dynamic_shapes argument
}

# torch.onnx.export arguments whose only value that makes a working artifact is True.
_TRUE_ONNX_KEYS = {
    "export_params": "False writes the graph without its (locked) weights, which neither the "
    "check after the export nor the runtime can load",
}

# torch.onnx.export arguments whose only value that keeps the weights inside outputs/ is False.
_FALSE_ONNX_KEYS = {
    "dump_exported_program": "True writes the exported program, weights included, into "
    "artifacts_dir (the current folder), outside outputs/: with save_original=True a plain "
    "copy of the original's weights (save_logs=True keeps what a failed export needs)",
}


def _legacy_only_keys() -> dict[str, tuple[Any, ...]]:
    """torch.onnx.export arguments that only the legacy exporter (``dynamo=False``) reads, with
    the values that do what the dynamo exporter does anyway (an eval-mode model, every
    constant folded, no custom opsets or module functions): torch's dynamo path drops the
    arguments without a word, so another value would look applied and be ignored."""
    return {
        "training": (torch.onnx.TrainingMode.EVAL, torch.onnx.TrainingMode.PRESERVE),
        "operator_export_type": (torch.onnx.OperatorExportTypes.ONNX,),
        "do_constant_folding": (True,),
        "custom_opsets": (None, {}),
        "export_modules_as_functions": (False,),
        "autograd_inlining": (True,),
    }


DimSpec = dict[int, Any]  # axis -> torch.export.Dim (or a Dim hint such as Dim.AUTO)


@dataclass(frozen=True)
class SizeRange:
    """The sizes an exported program's dynamic axis takes, ``max`` None for no highest;
    :func:`~skruntime.backends.inputs.input_specs` reads it as it reads a ``Dim``'s bounds."""

    min: int
    max: int | None

    def within(self, dim: Any) -> SizeRange:
        """This range narrowed to the sizes ``dim`` (the axis's declared ``Dim`` or hint, or
        None) declares."""
        low, high = declared_range(dim) or (0, None)
        highs = [h for h in (self.max, high) if h is not None]
        return SizeRange(max(self.min, low), min(highs) if highs else None)


def _finite(bound: Any) -> int | None:
    """A sympy bound as an int; None for an infinite one (``int_oo``, ``-int_oo``)."""
    return int(bound) if isinstance(bound, int) or getattr(bound, "is_Integer", False) else None


def exported_axes(program: torch.export.ExportedProgram) -> list[dict[int, SizeRange]] | None:
    """Per user input of ``program``, its dynamic axes and the sizes ``torch.export`` exported
    them for (its ``range_constraints``); None when an input's example tensor is not in the
    graph (the declared axes are recorded then). They can be narrower than the declared ones:
    a hint (``Dim.AUTO``, ``Dim.DYNAMIC``) without min becomes at least 2 (``torch.export``
    specialises sizes 0 and 1; torch.onnx exports size-obliviously and keeps them), and what
    ``forward`` needs narrows it further (a ``Conv1d`` of kernel 3: at least 3). An axis torch
    fixed to its example size is absent: the record makes it static."""
    from torch.utils._sympy.value_ranges import bound_sympy

    nodes = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    axes: list[dict[int, SizeRange]] = []
    for name in program.graph_signature.user_inputs:
        value = nodes[name].meta.get("val")
        if not isinstance(value, Tensor):
            return None
        found: dict[int, SizeRange] = {}
        for axis, size in enumerate(value.shape):
            if isinstance(size, torch.SymInt):
                bounds = bound_sympy(size.node.expr, program.range_constraints)
                low, high = _finite(bounds.lower), _finite(bounds.upper)
                found[axis] = SizeRange(max(low or 0, 0), high)
        axes.append(found)
    return axes


@dataclass(frozen=True)
class ExportOptions:
    """Validated export settings; build it with :func:`build_export_options`."""

    input_names: list[str]
    output_names: list[str]
    key_name: str = DEFAULT_KEY_NAME
    dynamic_shapes: tuple[DimSpec | None, ...] | None = None
    dynamic_axes: dict[str, dict[int, str]] | None = None
    onnx_extra: dict[str, Any] = field(default_factory=dict)
    inductor_configs: dict[str, Any] = field(default_factory=dict)
    mutated_inputs: tuple[int, ...] | None = None
    """Positions of the inputs (key included) that the module's forward changes in place, when
    the caller found them in a run of its own (the protector's checked run of the locked
    model); None: the torch exporters find them with one more run of the module."""
    key_commitment: str | None = None
    """The key's :func:`~skruntime.keyfile.key_commitment`, recorded in the file with the key's
    input spec so that the runtime refuses TXT key files combining into another key."""

    def names(self, with_key: bool) -> list[str]:
        """Graph input names: the model inputs, then the key when ``with_key``."""
        return [*self.input_names, self.key_name] if with_key else list(self.input_names)

    def inputs_record(
        self,
        args: Sequence[Tensor],
        with_key: bool,
        exported: Sequence[Mapping[int, SizeRange]] | None = None,
    ) -> dict[str, str]:
        """The input record every format stores in its file (``{INPUTS_METADATA: json}``):
        names, dtypes, static sizes and the ranges of the dynamic axes, which the runtime
        checks every call against (a traced graph takes a wrong key silently).

        ``exported``: the dynamic axes of the program a ``torch.export``-based exporter wrote
        (:func:`exported_axes`); the record then says what that program is, each range the
        narrower of torch's and the declared one. Without it (a TorchScript trace, the legacy
        ONNX exporter), the declared dynamic axes and their ``Dim`` min/max."""
        declared = self.export_dynamic_shapes(with_key) or (None,) * len(args)
        dynamic: list[Mapping[int, Any]] = [
            {axis: dim for axis, dim in (spec or {}).items() if _dynamic(dim)} for spec in declared
        ]
        if exported is not None:
            dynamic = [
                {axis: size.within(dims.get(axis)) for axis, size in axes.items()}
                for axes, dims in zip(exported, dynamic, strict=True)
            ]
        specs = input_specs(
            args,
            dynamic,
            self.names(with_key),
            self.key_name if with_key else None,
            self.key_commitment if with_key else None,
        )
        return {INPUTS_METADATA: json.dumps(specs)}

    def export_dynamic_shapes(self, with_key: bool) -> tuple[DimSpec | None, ...] | None:
        """``dynamic_shapes`` for ``torch.export``/dynamo, the key's length static."""
        if self.dynamic_shapes is None:
            return None
        return (*self.dynamic_shapes, None) if with_key else tuple(self.dynamic_shapes)

    def onnx_dynamic_axes(self) -> dict[str, dict[int, str]] | None:
        """ONNX-style ``dynamic_axes`` for the legacy exporter (derived from dynamic_shapes)."""
        if self.dynamic_axes is not None:
            return {name: dict(axes) for name, axes in self.dynamic_axes.items()}
        if self.dynamic_shapes is None:
            return None
        axes: dict[str, dict[int, str]] = {}
        for name, spec in zip(self.input_names, self.dynamic_shapes, strict=True):
            dyn = {d: _dim_label(dim, name, d) for d, dim in (spec or {}).items() if _dynamic(dim)}
            if dyn:
                axes[name] = dyn
        return axes or None


def _dim_label(dim: Any, input_name: str, axis: int) -> str:
    name = getattr(dim, "__name__", None)
    return name if isinstance(name, str) and name else f"{_identifier(input_name)}_{axis}"


def _identifier(name: str) -> str:
    ident = re.sub(r"\W", "_", name)
    return ident if ident and not ident[0].isdigit() else f"d_{ident}"


def _dynamic(dim: Any) -> bool:
    return dim is not None and dim is not torch.export.Dim.STATIC


def _is_dim(value: Any) -> bool:
    # torch.export.Dim("batch") instances and the Dim.AUTO / Dim.DYNAMIC / Dim.STATIC hints.
    return isinstance(value, torch.export.Dim | type(torch.export.Dim.AUTO))


def _check_tensors(input_tensors: Any) -> list[Tensor]:
    if not isinstance(input_tensors, list | tuple) or not input_tensors:
        raise InvalidArgumentError(
            f"input_tensors must be a non-empty list of torch tensors, but got "
            f"{input_tensors!r:.80}. Pass one example tensor per model input, e.g. "
            "[torch.randn(2, 3, 32, 32)]."
        )
    for i, t in enumerate(input_tensors):
        if not isinstance(t, Tensor):
            raise InvalidArgumentError(
                f"input_tensors[{i}] must be a torch.Tensor, but got {type(t).__name__}. "
                "Pass one example tensor per model input."
            )
    return list(input_tensors)


def _check_names(value: Any, what: str) -> list[str]:
    if not isinstance(value, list | tuple) or not all(isinstance(n, str) and n for n in value):
        raise InvalidArgumentError(
            f'onnx_params["{what}"] must be a list of non-empty strings, but got {value!r:.80}.'
        )
    if len(set(value)) != len(value):
        raise InvalidArgumentError(
            f'onnx_params["{what}"] must not repeat a name, but got {list(value)}. '
            "Give every tensor its own name."
        )
    return list(value)


def _input_names(params: Mapping[str, Any], n_inputs: int, key_name: str) -> list[str]:
    given = params.get("input_names")
    if not given:
        raise InvalidArgumentError(
            'onnx_params["input_names"] is missing or empty. Give one name per model input, '
            'e.g. {"input_names": ["input.1"]}.'
        )
    names = _check_names(given, "input_names")
    if len(names) > n_inputs:
        raise InvalidArgumentError(
            f'onnx_params["input_names"] has {len(names)} names ({names}) but input_tensors has '
            f"only {n_inputs} tensor(s). Give at most one name per tensor in input_tensors."
        )
    if key_name in names:
        raise InvalidArgumentError(
            f'onnx_params["input_names"] uses "{key_name}", the name of the key input that '
            "skprotect appends. Rename that model input."
        )
    i = 1
    while len(names) < n_inputs:  # auto-name the remaining inputs "input.<k>"
        candidate = f"input.{i}"
        if candidate not in names and candidate != key_name:
            names.append(candidate)
        i += 1
    return names


def _normalise_axes(raw: Any, name: str) -> dict[int, str]:
    if isinstance(raw, Mapping):
        items = list(raw.items())
    elif isinstance(raw, list | tuple):
        items = [(axis, None) for axis in raw]
    else:
        raise InvalidArgumentError(
            f'onnx_params["dynamic_axes"]["{name}"] must be a list of axes or a dict '
            f"{{axis: name}}, but got {raw!r:.80}."
        )
    axes: dict[int, str] = {}
    for axis, label in items:
        if not isinstance(axis, int) or isinstance(axis, bool):
            raise InvalidArgumentError(
                f'onnx_params["dynamic_axes"]["{name}"] axes must be integers, but got {axis!r}.'
            )
        if label is not None and not (isinstance(label, str) and label):
            raise InvalidArgumentError(
                f'onnx_params["dynamic_axes"]["{name}"][{axis}] must be a dimension name '
                f"(a non-empty string), but got {label!r}."
            )
        axes[axis] = label or f"{_identifier(name)}_{axis}"
    return axes


def _dynamic_axes(
    raw: Any, input_names: list[str], output_names: list[str], key_name: str
) -> dict[str, dict[int, str]] | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise InvalidArgumentError(
            f'onnx_params["dynamic_axes"] must be a dict {{tensor name: axes}} or None, but got '
            f"{type(raw).__name__}."
        )
    out: dict[str, dict[int, str]] = {}
    for name, axes in raw.items():
        if name == key_name:
            raise InvalidArgumentError(
                f'onnx_params["dynamic_axes"] makes the key input "{key_name}" dynamic; the key '
                "has a fixed length. Remove it from dynamic_axes."
            )
        if name not in input_names and name not in output_names:
            raise InvalidArgumentError(
                f'onnx_params["dynamic_axes"] names "{name}", which is neither an input name '
                f"{input_names} nor an output name {output_names}. Use the names from "
                'onnx_params["input_names"] and onnx_params["output_names"].'
            )
        out[name] = _normalise_axes(axes, name)
    return out


def _check_axis(axis: Any, ndim: int, where: str, seen: Mapping[int, Any]) -> int:
    """``axis`` counted from the start; one already in ``seen`` (e.g. 0 and -2 of a 2-D
    tensor) is refused, not silently replaced."""
    if not isinstance(axis, int) or isinstance(axis, bool):
        raise InvalidArgumentError(f"{where}: dimension keys must be integers, but got {axis!r}.")
    if not -ndim <= axis < ndim:
        raise InvalidArgumentError(
            f"{where}: dimension {axis} is out of range for a tensor with {ndim} dimension(s). "
            f"Use a dimension index in [0, {ndim - 1}]."
        )
    if axis % ndim in seen:
        raise InvalidArgumentError(
            f"{where}: dimension {axis} is dimension {axis % ndim} again, given twice. Give each "
            "dimension once."
        )
    return axis % ndim


def _check_dynamic_size(t: Tensor, i: int, axis: int, dim: Any, source: str) -> None:
    size = t.shape[axis]
    if size == 1 and dim is not torch.export.Dim.STATIC:
        raise InvalidArgumentError(
            f"input_tensors[{i}] has size 1 in dimension {axis}, which {source} marks dynamic; "
            "torch.export treats size-1 dimensions as static. Pass an example tensor with size > 1 "
            "in every dynamic dimension (e.g. a batch of 2)."
        )
    lo, hi = getattr(dim, "min", None), getattr(dim, "max", None)
    if isinstance(lo, int) and isinstance(hi, int) and not lo <= size <= hi:
        raise InvalidArgumentError(
            f"input_tensors[{i}] has size {size} in dimension {axis}, outside the range "
            f"[{lo}, {hi}] of its dynamic dimension {getattr(dim, '__name__', dim)}. Pass an "
            "example tensor whose size is inside the range, or widen the Dim's min/max."
        )


def _dynamic_shapes(raw: Any, tensors: list[Tensor], source: str) -> tuple[DimSpec | None, ...]:
    if isinstance(raw, Mapping) or not isinstance(raw, list | tuple):
        raise InvalidArgumentError(
            f"{source} must be a tuple or list with one dict {{dim: torch.export.Dim}} (or None) "
            f"per input tensor, but got {type(raw).__name__}."
        )
    if len(raw) != len(tensors):
        raise InvalidArgumentError(
            f"{source} has {len(raw)} entr{'y' if len(raw) == 1 else 'ies'} but input_tensors has "
            f"{len(tensors)} tensor(s). Give one entry per input tensor (None for a fully static "
            "input); the key input is added by skprotect."
        )
    shapes: list[DimSpec | None] = []
    for i, (spec, t) in enumerate(zip(raw, tensors, strict=True)):
        if spec is None:
            shapes.append(None)
            continue
        if not isinstance(spec, Mapping):
            raise InvalidArgumentError(
                f"{source}[{i}] must be a dict {{dim: torch.export.Dim}} or None, but got "
                f"{type(spec).__name__}."
            )
        norm: DimSpec = {}
        for axis, dim in spec.items():
            a = _check_axis(axis, t.dim(), f"{source}[{i}]", norm)
            if dim is not None and not _is_dim(dim):
                raise InvalidArgumentError(
                    f"{source}[{i}][{axis}] must be a torch.export.Dim or None, but got "
                    f"{dim!r:.80}. Use e.g. torch.export.Dim('batch')."
                )
            if dim is not None:
                _check_dynamic_size(t, i, a, dim, source)
            norm[a] = dim
        shapes.append(norm)
    _check_one_definition(shapes, source)
    _check_one_size(shapes, tensors, source)
    return tuple(shapes)


def derived_root_size(fn: Callable[[int], int], size: int) -> int | None:
    """The size of a derived ``Dim``'s root for which its function ``fn`` (affine, as
    torch.export's ``a * b + c`` are) gives ``size``; None when no size >= 0 does."""
    offset, slope = fn(0), fn(1) - fn(0)
    if slope <= 0 or (size - offset) % slope or size < offset:
        return None
    found = (size - offset) // slope
    return found if fn(found) == size else None


def _check_one_size(
    shapes: Sequence[DimSpec | None], tensors: list[Tensor], source: str, labels: str = "Dim"
) -> None:
    """Refuse axes of one dimension name whose example sizes differ: the configuration records
    them as one size, so the runtime refused the example inputs themselves (torch.export
    refuses them too, but the legacy ONNX exporter and a TorchScript trace took them)."""
    seen: dict[str, tuple[int, str]] = {}
    derived: list[tuple[Any, int, str]] = []
    for i, (spec, t) in enumerate(zip(shapes, tensors, strict=True)):
        for axis, dim in (spec or {}).items():
            name = getattr(dim, "__name__", None)
            if not isinstance(name, str):  # None or a hint (Dim.AUTO): it ties nothing
                continue
            where = f"input_tensors[{i}] dimension {axis}"
            size, first = seen.setdefault(name, (t.shape[axis], where))
            if size != t.shape[axis]:
                raise InvalidArgumentError(
                    f"{source} gives {first} and {where} the one dimension {name!r}, but their "
                    f"example sizes differ ({size} and {t.shape[axis]}): axes of one dimension "
                    "always have one size, and the runtime refuses a call where they differ. "
                    f"Pass examples of one size there, or give those axes {labels}s of their own."
                )
            if hasattr(dim, "root") and callable(getattr(dim, "fn", None)):
                derived.append((dim, t.shape[axis], where))
    roots: dict[str, tuple[int, str]] = {}  # root -> its size a derived axis gives, and where
    for dim, size, where in derived:  # 2*b: twice the size of b's axes
        root, root_size = dim.root.__name__, seen.get(dim.root.__name__, (None, ""))[0]
        if root_size is not None and dim.fn(root_size) != size:
            raise InvalidArgumentError(
                f"{source} gives {where} the dimension {dim.__name__!r}, {dim.fn(root_size)} "
                f"for the size {root_size} of {root!r} in the example, but its example size is "
                f"{size}. Pass examples whose sizes follow {dim.__name__!r}."
            )
        if root_size is not None:
            continue
        # the root on no axis: the size it has in the example is the one each derived gives
        implied = derived_root_size(dim.fn, size)
        if implied is None:
            raise InvalidArgumentError(
                f"{source} gives {where} the dimension {dim.__name__!r}, but its example size "
                f"{size} is {dim.__name__!r} for no size of {root!r}. Pass an example whose "
                f"size follows {dim.__name__!r}."
            )
        other, other_where = roots.setdefault(root, (implied, where))
        if other != implied:
            raise InvalidArgumentError(
                f"{source} gives {other_where} and {where} dimensions derived from {root!r}, but "
                f"their example sizes need {root!r} of {other} and {implied}. Pass examples "
                f"whose sizes follow one size of {root!r}."
            )


def _check_one_definition(shapes: list[DimSpec | None], source: str) -> None:
    """Refuse two ``Dim`` objects of one name with other bounds before any work: torch.export
    refuses them ("Found different definitions"), but only once the AOTInductor export runs,
    after the lock and the ONNX export, which took them."""
    seen: dict[str, tuple[Any, str]] = {}
    for i, spec in enumerate(shapes):
        for axis, dim in (spec or {}).items():
            name = getattr(dim, "__name__", None)
            if not isinstance(name, str):  # None or a hint (Dim.AUTO): it has no name
                continue
            where = f"{source}[{i}][{axis}]"
            first, first_where = seen.setdefault(name, (dim, where))
            if (first.min, first.max) != (dim.min, dim.max):
                raise InvalidArgumentError(
                    f"{source} gives the dimension {name!r} two definitions: {first!r} at "
                    f"{first_where} and {dim!r} at {where}; torch.export refuses that. Use one "
                    "Dim object for axes of one size, or give the other Dim another name."
                )


def _shapes_from_axes(
    axes: dict[str, dict[int, str]], names: list[str], tensors: list[Tensor]
) -> tuple[DimSpec | None, ...]:
    dims: dict[str, Any] = {}  # one Dim per name: inputs sharing a dimension name stay equal
    shapes: list[DimSpec | None] = []
    for i, (name, t) in enumerate(zip(names, tensors, strict=True)):
        spec: DimSpec = {}
        for axis, label in axes.get(name, {}).items():
            a = _check_axis(axis, t.dim(), f'onnx_params["dynamic_axes"]["{name}"]', spec)
            _check_dynamic_size(t, i, a, None, 'onnx_params["dynamic_axes"]')
            ident = _identifier(label)
            spec[a] = dims.setdefault(ident, torch.export.Dim(ident))
        shapes.append(spec or None)
    _check_one_size(shapes, tensors, 'onnx_params["dynamic_axes"]', "dimension name")
    return tuple(shapes)


def _dynamic_set(spec: DimSpec | None) -> set[int]:
    return {a for a, d in (spec or {}).items() if _dynamic(d)}


def _check_consistent(
    a: tuple[DimSpec | None, ...], b: tuple[DimSpec | None, ...], names: list[str], other: str
) -> None:
    for name, sa, sb in zip(names, a, b, strict=True):
        da, db = _dynamic_set(sa), _dynamic_set(sb)
        if da != db:
            raise InvalidArgumentError(
                f'dynamic_shapes and {other} disagree for input "{name}": dynamic_shapes makes '
                f"dimension(s) {sorted(da)} dynamic, {other} makes {sorted(db)} dynamic. Make "
                "them agree, or give only one of them (set the other to None)."
            )


def _onnx_extra(params: Mapping[str, Any]) -> dict[str, Any]:
    accepted = set(inspect.signature(torch.onnx.export).parameters)
    extra: dict[str, Any] = {}
    handled = {"input_names", "output_names", "dynamic_axes", "dynamic_shapes"}
    for key, value in params.items():
        if key in handled:
            continue
        if not isinstance(key, str):
            raise InvalidArgumentError(f"onnx_params keys must be strings, but got {key!r}.")
        if _RESERVED_ONNX_KEYS.get(key):
            raise InvalidArgumentError(
                f'onnx_params["{key}"] cannot be set: {_RESERVED_ONNX_KEYS[key]}. Remove it.'
            )
        if key in _TRUE_ONNX_KEYS and value is not True:
            raise InvalidArgumentError(
                f'onnx_params["{key}"] must be True: {_TRUE_ONNX_KEYS[key]}. Remove it.'
            )
        if key in _FALSE_ONNX_KEYS and value is not False:
            raise InvalidArgumentError(
                f'onnx_params["{key}"] must be False: {_FALSE_ONNX_KEYS[key]}. Remove it.'
            )
        if key not in accepted:
            allowed = sorted(accepted - set(_RESERVED_ONNX_KEYS) - handled)
            raise InvalidArgumentError(
                f'onnx_params["{key}"] is not an argument of torch.onnx.export. Accepted keys '
                f"are {', '.join(['input_names', 'output_names', 'dynamic_axes', *allowed])}."
            )
        extra[key] = value
    dynamo = extra.get("dynamo")
    if dynamo is not None and not isinstance(dynamo, bool):
        raise InvalidArgumentError(
            f'onnx_params["dynamo"] must be True or False, but got {dynamo!r}: True forces the '
            "dynamo exporter, False the legacy one; leave it out to try the dynamo exporter "
            "first and fall back to the legacy one."
        )
    if dynamo is not False:
        for key, neutral in _legacy_only_keys().items():
            if key in extra and not any(extra[key] == value for value in neutral):
                raise InvalidArgumentError(
                    f'onnx_params["{key}"] = {extra[key]!r} is read only by the legacy exporter '
                    '(onnx_params["dynamo"] = False); the dynamo exporter, used by default, '
                    'ignores it. Add "dynamo": False to onnx_params to have it applied, or '
                    "remove it."
                )
    from onnx.defs import onnx_opset_version

    opset = extra.get("opset_version")
    newest = onnx_opset_version()
    if opset is not None and (
        not isinstance(opset, int) or isinstance(opset, bool) or not 9 <= opset <= newest
    ):
        raise InvalidArgumentError(
            f'onnx_params["opset_version"] must be an integer from 9 to {newest} (the newest '
            f"this onnx knows), but got {opset!r}. The default is {DEFAULT_OPSET}."
        )
    return extra


def _check_inductor_keys(configs: Mapping[str, Any]) -> None:
    """Refuse an option torch._inductor.config does not have before any work: AOTInductor
    raised it only when compiling, after the lock and the other formats' exports."""
    from torch._inductor import config

    known = config.get_config_copy()
    for key in configs:
        if key not in known and not _is_alias(config, key):
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise InvalidArgumentError(
                f"inductor_configs[{key!r}] is not an option of torch._inductor.config "
                f"(torch {torch.__version__}).{hint} Remove it, or use an option name of "
                "torch/_inductor/config.py."
            )
        entry = getattr(config, "_config", {}).get(key)
        expected = getattr(entry, "value_type", None)
        if _wrong_scalar(configs[key], expected):
            why = " (the text 'False' is true)" if expected is bool else ""
            default = getattr(entry, "default", None)
            example = f" (its default: {default!r})" if isinstance(default, expected) else ""
            kind = {bool: "True or False", int: "an integer", float: "a number"}.get(
                expected, "a string"
            )
            raise InvalidArgumentError(
                f"inductor_configs[{key!r}] takes {kind}, but got {configs[key]!r:.80} "
                f"({type(configs[key]).__name__}), which AOTInductor would use as given{why}. "
                f"Pass {kind}{example}."
            )


def _wrong_scalar(value: Any, expected: Any) -> bool:
    """Whether ``value`` is a scalar of another kind than the ``bool``/``int``/``float``/``str``
    option ``expected`` takes: text for a flag or a number, a number for a text, a fraction for
    a count. An option of another type (``int | None``, a list) is not checked."""
    scalars = (bool, int, float, str)
    if expected not in scalars or value is None or not isinstance(value, scalars):
        return False
    if expected is str or isinstance(value, str):
        return (expected is str) != isinstance(value, str)
    return expected is int and isinstance(value, float)


def _is_alias(config: Any, key: str) -> bool:
    """Whether ``key`` is an option of ``config`` that names another (``force_disable_caches``
    sets torch.compiler.config's): ``config.patch`` takes it, ``get_config_copy`` lacks it. The
    module's own names (``triton``, ``patch``) are no options."""
    own = key in vars(config) or hasattr(type(config), key)
    return not own and hasattr(config, key)


def build_export_options(
    input_tensors: list[Tensor],
    onnx_params: Mapping[str, Any] | None = None,
    dynamic_shapes: Sequence[Mapping[int, Any] | None] | None = None,
    inductor_configs: Mapping[str, Any] | None = None,
    *,
    key_name: str = DEFAULT_KEY_NAME,
) -> ExportOptions:
    """Validate the public export arguments and return the options every exporter uses.

    >>> opts = build_export_options([torch.randn(2, 8)], {"input_names": ["x"],
    ...     "output_names": ["y"]}, ({0: torch.export.Dim("batch")},))
    >>> opts.names(with_key=True)
    ['x', 'key_vector']
    """
    tensors = _check_tensors(input_tensors)
    if onnx_params is None:
        onnx_params = DEFAULT_ONNX_PARAMS
    if not isinstance(onnx_params, Mapping):
        raise InvalidArgumentError(
            f"onnx_params must be a dict, but got {type(onnx_params).__name__}. Pass e.g. "
            '{"input_names": ["input.1"], "output_names": ["output.1"], "dynamic_axes": None}.'
        )
    if not isinstance(key_name, str) or not key_name:
        raise InvalidArgumentError(f"key_name must be a non-empty string, but got {key_name!r}.")
    input_names = _input_names(onnx_params, len(tensors), key_name)
    output_names = _check_names(
        onnx_params.get("output_names") or list(DEFAULT_ONNX_PARAMS["output_names"]),
        "output_names",
    )
    clash = (set(output_names) & set(input_names)) | ({key_name} & set(output_names))
    if clash:
        raise InvalidArgumentError(
            f'onnx_params["output_names"] reuses input name(s) {sorted(clash)}. Give outputs '
            "names of their own."
        )
    axes = _dynamic_axes(onnx_params.get("dynamic_axes"), input_names, output_names, key_name)
    shapes = None
    if dynamic_shapes is not None:
        shapes = _dynamic_shapes(dynamic_shapes, tensors, "dynamic_shapes")
    if onnx_params.get("dynamic_shapes") is not None:
        inner = _dynamic_shapes(
            onnx_params["dynamic_shapes"], tensors, 'onnx_params["dynamic_shapes"]'
        )
        if shapes is None:
            shapes = inner
        else:
            _check_consistent(shapes, inner, input_names, 'onnx_params["dynamic_shapes"]')
    if axes is not None:
        from_axes = _shapes_from_axes(axes, input_names, tensors)
        if shapes is None:
            shapes = from_axes if any(s for s in from_axes) else None
        else:
            _check_consistent(shapes, from_axes, input_names, 'onnx_params["dynamic_axes"]')
    if inductor_configs is None:
        inductor_configs = {}
    if not isinstance(inductor_configs, Mapping) or not all(
        isinstance(k, str) for k in inductor_configs
    ):
        raise InvalidArgumentError(
            f"inductor_configs must be a dict with string keys, but got {inductor_configs!r:.80}. "
            'Pass e.g. {"max_autotune": True}.'
        )
    _check_inductor_keys(inductor_configs)
    return ExportOptions(
        input_names=input_names,
        output_names=output_names,
        key_name=key_name,
        dynamic_shapes=shapes,
        dynamic_axes=axes,
        onnx_extra=_onnx_extra(onnx_params),
        inductor_configs=dict(inductor_configs),
    )
