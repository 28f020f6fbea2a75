"""The inputs' dynamic axes of a protection: their names and ranges as the configuration
records them (the runtime checks that axes of one name get one size in a call), and the example
inputs at other sizes of them, on which every CPU artifact is checked too."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.fx.experimental.symbolic_shapes import is_concrete_int

from .export.base import first_line, one_at_a_time, signature_dynamic_shapes
from .export.options import ExportOptions, derived_root_size
from .logs import get_logger

__all__ = ["DynamicAxes", "describe_inputs", "dynamic_axes", "export_reference", "other_sizes"]


@dataclass(frozen=True)
class DynamicAxes:
    """The inputs' dynamic axes: per input, axis -> name (axes of one name have one size), and
    per name the range of sizes, ``(lowest, highest or None)``. A name without a range is a
    hint's own (``"DimHint(AUTO)"``, torch.export could not resolve it): it ties nothing.
    ``derived``: per derived ``Dim`` (``2 * batch``), its root's name and the function giving
    its size from the root's."""

    names: list[dict[int, str]]
    ranges: dict[str, tuple[int, int | None]]
    derived: dict[str, tuple[str, Callable[[int], int]]] = field(default_factory=dict)


def _is_hint(dim: Any) -> bool:
    """Whether ``dim`` is a ``Dim.AUTO`` / ``Dim.DYNAMIC`` / ``Dim.STATIC`` hint (no name)."""
    return isinstance(dim, type(torch.export.Dim.AUTO))


def _size_range(low: Any, high: Any) -> tuple[int, int | None]:
    """A ``Dim``'s or torch.export's range as ints; ``None``: no highest size (``int_oo``)."""
    finite = isinstance(high, int) or getattr(high, "is_Integer", False)
    return int(low or 0), int(high) if finite else None


def _derived(specs: list[dict[int, Any]]) -> dict[str, tuple[Any, Callable[[int], int]]]:
    """Per derived ``Dim`` of ``specs`` (``2 * batch``), its root ``Dim`` and function."""
    return {
        d.__name__: (d.root, d.fn)
        for spec in specs
        for d in spec.values()
        if hasattr(d, "root") and callable(getattr(d, "fn", None))
    }


def dynamic_axes(
    model: nn.Module, options: ExportOptions, tensors: list[torch.Tensor]
) -> DynamicAxes:
    """The inputs' dynamic axes, named for the configuration.

    The runtime checks that axes of one name have one size in a call: an AOTInductor package
    reads one input's size for all of them, so a call where they differ computes garbage or
    reads past an input's end. A named ``Dim`` is its name; a hint carries none, so torch.export
    says which symbolic size it became: the name of a named ``Dim`` it equals, else a symbol
    (``s52``, the same for the axes it found equal), recorded under the first axis that has it,
    e.g. ``"x.shape[0]"``, which the runtime's messages can show. An axis torch fixed to its
    example size is static.
    """
    shapes = options.dynamic_shapes or (None,) * len(tensors)
    specs = [{a: d for a, d in (spec or {}).items() if d is not None} for spec in shapes]
    named = {
        d.__name__: _size_range(d.min, d.max)
        for spec in specs
        for d in spec.values()
        if not _is_hint(d)
    }
    found = _derived(specs)
    derived = {name: (root.__name__, fn) for name, (root, fn) in found.items()}
    roots = {root.__name__: _size_range(root.min, root.max) for root, _ in found.values()}
    if not any(_is_hint(d) for spec in specs for d in spec.values()):
        names = [{a: d.__name__ for a, d in spec.items()} for spec in specs]
        return DynamicAxes(names, {**roots, **named}, derived)
    program = export_reference(model, options, tensors)
    if program is None:  # unresolved: the hints' own names, which the runtime ties to nothing
        static = torch.export.Dim.STATIC
        names = [
            {a: getattr(d, "__name__", str(d)) for a, d in spec.items() if d is not static}
            for spec in specs
        ]
        return DynamicAxes(names, {**roots, **named}, derived)
    nodes = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    sizes = [nodes[name].meta["val"].shape for name in program.graph_signature.user_inputs]
    # symbolic size -> its recorded name: a named Dim's, else the first axis's that has it
    size_names = {
        str(sizes[i][a]): d.__name__
        for i, spec in enumerate(specs)
        for a, d in spec.items()
        if not _is_hint(d)
    }
    axes = DynamicAxes([{} for _ in specs], dict(roots), derived)
    for i, spec in enumerate(specs):
        for axis, dim in sorted(spec.items()):
            size = sizes[i][axis]
            if is_concrete_int(size):
                get_logger().info(
                    "input %d, axis %d (%s): torch.export fixed it to %s, recorded static",
                    i,
                    axis,
                    dim,
                    size,
                )
                continue
            # not an identifier, so never a named Dim's name
            name = size_names.setdefault(str(size), f"{options.input_names[i]}.shape[{axis}]")
            axes.names[i][axis] = name
            limits = program.range_constraints.get(size.node.expr)  # none for an expression
            axes.ranges[name] = _size_range(limits.lower, limits.upper) if limits else (0, None)
    return axes


@one_at_a_time
def export_reference(
    model: nn.Module, options: ExportOptions, tensors: list[torch.Tensor]
) -> torch.export.ExportedProgram | None:
    """``model`` exported with ``dynamic_shapes`` (its inputs' sizes, symbolic or fixed, and
    their ranges), or None when torch.export cannot export it (logged). It takes its turn with
    the exports (:func:`~.export.base.one_at_a_time`): beside an export in another thread (a
    protection in each), both failed ("Trying to pop empty mode stack"), this one only logged."""
    shapes = signature_dynamic_shapes(model, options.export_dynamic_shapes(with_key=False))
    try:
        with warnings.catch_warnings():  # the exports before said what there is to say
            warnings.simplefilter("ignore")
            copies = tuple(t.detach().clone() for t in tensors)  # forward may change them
            return torch.export.export(model, copies, dynamic_shapes=shapes)
    except Exception as err:
        get_logger().warning(
            "torch.export cannot resolve the Dim.AUTO / Dim.DYNAMIC axes of dynamic_shapes "
            "(%s): they are recorded unnamed, so the runtime cannot check that the axes torch "
            "found equal get one size in a call. Give such axes one named Dim instead.",
            first_line(err),
        )
        return None


def other_sizes(
    inputs: list[torch.Tensor], axes: DynamicAxes
) -> tuple[list[torch.Tensor], str] | None:
    """The example inputs with every named dynamic axis one longer (or one shorter, at the
    highest size of its range), axes of one name together, a derived axis (``2 * batch``) at
    its root's new size: the same slices repeated or dropped, so values stay valid; None
    without such axes. Returns the tensors and a description of the sizes, e.g.
    ``"batch=3"``."""
    sizes: dict[str, int] = {}
    for tensor, names in zip(inputs, axes.names, strict=True):
        for axis, name in names.items():
            root, fn = axes.derived.get(name, (name, None))
            if root not in axes.ranges or root in sizes:  # unnamed, or done
                continue
            n, (low, high) = tensor.shape[axis], axes.ranges[root]
            if fn is not None:  # the root's example size: the one the derived size comes from
                n = derived_root_size(fn, n)
                if n is None:
                    continue
            sizes[root] = n + 1 if high is None or n + 1 <= high else n - 1
            if sizes[root] < max(low, 1):
                del sizes[root]
    for name, (root, fn) in axes.derived.items():
        if root in sizes:
            sizes[name] = fn(sizes[root])
    if not sizes:
        return None
    resized = []
    for tensor, names in zip(inputs, axes.names, strict=True):
        for axis, name in names.items():
            size = sizes.get(name)
            if size is None:
                continue
            n = tensor.shape[axis]
            if size > n:  # the first slices again, as many as needed
                tensor = tensor.index_select(axis, torch.arange(size, device=tensor.device) % n)
            else:
                tensor = tensor.narrow(axis, 0, size)
        resized.append(tensor)
    return resized, ", ".join(f"{k}={v}" for k, v in sizes.items())


def describe_inputs(
    options: ExportOptions, tensors: list[torch.Tensor], axes: DynamicAxes
) -> list[dict]:
    """Input names, example shapes, dtypes and named dynamic axes, for the configuration."""
    return [
        {
            "name": name,
            "shape": list(t.shape),
            "dtype": str(t.dtype).removeprefix("torch."),
            "dynamic_dims": {str(axis): dim for axis, dim in sorted(dims.items())},
        }
        for name, t, dims in zip(options.input_names, tensors, axes.names, strict=True)
    ]
