"""ONNX export: one self-contained ``.onnx`` file, run with onnxruntime.

The dynamo exporter (``torch.onnx.export(dynamo=True)``) is the default: it honours dynamic
shapes everywhere, where the legacy TorchScript-based exporter bakes e.g. MultiheadAttention's
sequence length into the graph. The legacy exporter is used only when the dynamo export fails
(the report's notes say so and why), or when the user sets ``onnx_params["dynamo"]``.
Weights are always stored inside the shipped file (no external-data side file). The dynamo
exporter writes them to a side file in a temporary folder first, and :func:`_save_single_file`
inlines them one tensor at a time: the weights are never held twice more in memory (a
serialised and a parsed copy of the whole model), which doubled the export's peak memory
beside the model for models of hundreds of MB.
"""

from __future__ import annotations

import contextlib
import functools
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import external_data_helper
from torch import Tensor, nn

from skruntime.backends.base import MAX_ONNX_BYTES

from ..errors import ExportError, InvalidArgumentError
from ..formats import ExportFormat
from ..logs import get_logger
from .base import (
    ExportReport,
    Runner,
    check_example_inputs,
    collect_warnings,
    first_line,
    isolated_traces,
    one_at_a_time,
    quiet_upstream_warnings,
    refuse_baked_values,
    register_exporter,
    signature_dynamic_shapes,
)
from .options import DEFAULT_OPSET, ExportOptions, SizeRange, exported_axes

_DYNAMO_INSTEAD = (
    "export ONNX with the dynamo exporter, which traces such values symbolically (leave "
    'onnx_params["dynamo"] out or True, with an opset_version of 18 or more), or where it '
    "fails leave ONNX out of model_export_formats and use INDUCTOR_CPU/INDUCTOR_GPU"
)
"""What :func:`~.base.refuse_baked_values` advises for a value the fallback exporter baked in
torch's code: not "use ONNX", the format that failed."""

_OTHER_FORMATS = (
    "Leave ExportFormat.ONNX out of model_export_formats and protect this model to "
    "TORCHSCRIPT_CPU / TORCHSCRIPT_GPU or INDUCTOR_CPU / INDUCTOR_GPU, whose files have no such "
    "limit (e.g. model_export_formats=ExportFormat.INDUCTOR_CPU | ExportFormat.INDUCTOR_GPU). "
    "ONNX external data (weights in a side file) is no way out: the signed configuration "
    "hashes one model file, and the runtime loads that file alone."
)


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB ({n:,} bytes)"


def check_fits_one_file(module: nn.Module, what: str) -> None:
    """Raise :class:`ExportError` when ``module``'s parameters and buffers alone exceed
    :data:`MAX_ONNX_BYTES`: before any export work, instead of an ``onnxruntime`` protobuf
    error when the written file is first loaded. ``what`` names the module in the message."""
    # each once: parameters() and buffers() leave out a tensor shared by several modules
    size = sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))
    if size > MAX_ONNX_BYTES:
        raise ExportError(
            f"{what} cannot be exported to ONNX: its weights are {_size(size)}, and one ONNX "
            f"file holds at most {_size(MAX_ONNX_BYTES)} (protobuf's limit, which onnxruntime "
            f"cannot load beyond). {_OTHER_FORMATS}"
        )


def _check_written_size(path: Path) -> None:
    """Remove ``path`` and raise :class:`ExportError` if it is over :data:`MAX_ONNX_BYTES`
    (weights just under the limit, and the graph's own constants, can push it over)."""
    size = path.stat().st_size
    if size > MAX_ONNX_BYTES:
        path.unlink()
        raise ExportError(
            f"The ONNX file is {_size(size)}, over the {_size(MAX_ONNX_BYTES)} one ONNX file can "
            f"hold (protobuf's limit, which onnxruntime cannot load beyond). {_OTHER_FORMATS}"
        )


@functools.lru_cache(maxsize=4)
def _torchlib_functions(
    build: Any, opset_version: int, state: tuple[frozenset[str], int, int]
) -> tuple[int, dict[Any, list[Any]]]:
    """The opset and the functions of the registry ``build`` (torch's own ``from_torchlib``)
    makes for ``opset_version`` in the torchlib ``state`` (:func:`_torchlib_state`): it
    depends on nothing else than the installed torch and onnxscript."""
    registry = build(opset_version=opset_version)
    return registry.opset_version, registry.functions


def _torchlib_state() -> tuple[frozenset[str], int, int]:
    """What torch's ``from_torchlib`` reads that a process can change: which of the operators
    torchlib has functions for are registered (importing ``torch.ao.quantization`` or
    ``torchvision`` registers some; other operators, such as the inductor ``prims`` and the
    ``c10d_functional`` ones torch's first export registers, are left out, or the second export
    of a process built the registry again), and how many functions torch's and onnxscript's
    torchlib registries hold (``onnx_impl`` and onnxscript's ``torch_op`` add some with no
    operator registered). A few milliseconds."""
    from onnxscript.function_libs.torch_lib import ops, registration
    from torch.onnx._internal.exporter._torchlib import _torchlib_registry

    del ops  # imported for its registrations, as from_torchlib does
    torch_metas = _torchlib_registry.get_torchlib_ops()
    named = {name.partition(".")[0] for name in registration.default_registry}
    named |= {
        meta.fx_target.name().partition(".")[0]
        for meta in torch_metas
        if isinstance(meta.fx_target, torch._ops.OpOverload)
    }
    operators = frozenset(
        name for name in torch._C._dispatch_get_all_op_names() if name.partition(".")[0] in named
    )
    count = sum(len(f.overloads) + len(f.complex) for f in registration.default_registry.values())
    return operators, len(torch_metas), count


@contextlib.contextmanager
def _torchlib_registry_reused() -> Iterator[None]:
    """Within the block, ``torch.onnx.export`` gets a copy of the ONNX function registry built
    at an earlier export of the process in the same torchlib state (:func:`_torchlib_state`),
    not one built anew: it reads the source of about 500 torchlib functions to build it, 0.8 s
    of a 1.9 s export of a small model. Each export gets its own lists, so a
    ``custom_translation_table`` does not outlive its export. With a torch whose exporter lacks
    this registry the block changes nothing."""
    try:
        from torch.onnx._internal.exporter import _registration

        registry_class = _registration.ONNXRegistry
        original = registry_class.__dict__["from_torchlib"]
        build = original.__get__(None, registry_class)
        # what _torchlib_state reads, there to be read (computed once, by the export)
        from onnxscript.function_libs.torch_lib import registration
        from torch.onnx._internal.exporter._torchlib import _torchlib_registry

        del registration, _torchlib_registry
    except (ImportError, AttributeError, KeyError):
        yield
        return

    def from_torchlib(cls: type, opset_version: int = _registration._constants.TORCHLIB_OPSET):
        opset, functions = _torchlib_functions(build, opset_version, _torchlib_state())
        registry = cls()
        registry._opset_version = opset
        registry.functions = {target: list(metas) for target, metas in functions.items()}
        return registry

    registry_class.from_torchlib = classmethod(from_torchlib)
    try:
        yield
    finally:
        registry_class.from_torchlib = original


def _torch_onnx_export(
    module: nn.Module,
    args: tuple[Tensor, ...],
    f: Path,
    options: ExportOptions,
    with_key: bool,
    *,
    dynamo: bool,
    extra: dict[str, Any],
) -> list[dict[int, SizeRange]] | None:
    """Export to ``f``; return the dynamic axes of the program the dynamo exporter exported
    (:func:`exported_axes`), None for the legacy exporter, which has none."""
    kwargs: dict[str, Any] = {
        "input_names": options.names(with_key),
        "output_names": options.output_names,
        "opset_version": DEFAULT_OPSET,
        "verbose": False,
        **extra,
        "dynamo": dynamo,
    }
    if dynamo:
        shapes = options.export_dynamic_shapes(with_key)
        kwargs["dynamic_shapes"] = signature_dynamic_shapes(module, shapes)
        kwargs["external_data"] = True  # inlined by _save_single_file, a tensor at a time
    else:
        kwargs["dynamic_axes"] = options.onnx_dynamic_axes()
    with (
        isolated_traces() if dynamo else contextlib.nullcontext(),
        _torchlib_registry_reused() if dynamo else contextlib.nullcontext(),
        quiet_upstream_warnings(),
    ):
        program = torch.onnx.export(module, args, str(f), **kwargs)
    if program is None:
        return None
    # written, so the graph's weights are not needed any more
    try:
        _drop_weights(program.model.graph)
    except AttributeError as err:  # another onnx_ir: not a failed export, only later freed
        get_logger().debug("ONNX export: the exporter's graph keeps its weights (%s)", err)
    exported = getattr(program, "exported_program", None)
    return None if exported is None else exported_axes(exported)


def _drop_weights(graph: Any) -> None:
    """Detach the weights from the dynamo exporter's in-memory graph (an ``onnx_ir`` graph,
    whose initializers wrap the module's own tensors). onnxscript's rewrite rules, module
    globals, keep the last node they matched, and so that graph and every weight of the
    exported module, until the next ONNX export in the process: the locked model (as large as
    the model) stayed alive through the artifact's check and after the protection returned."""
    for value in (*graph.inputs, *graph.initializers.values()):  # a folded weight: an input
        value.const_value = None


def _clear_records(message: Any) -> None:
    """Empty a proto's ``doc_string`` and ``metadata_props`` where it has them."""
    fields = message.DESCRIPTOR.fields_by_name
    if "doc_string" in fields:
        message.doc_string = ""
    if "metadata_props" in fields:
        del message.metadata_props[:]


def _clear_nodes(nodes: Any) -> None:
    for node in nodes:
        _clear_records(node)
        for attribute in node.attribute:
            if attribute.HasField("g"):
                _clear_graph(attribute.g)
            for graph in attribute.graphs:
                _clear_graph(graph)


def _clear_graph(graph: onnx.GraphProto) -> None:
    _clear_records(graph)
    for item in (*graph.input, *graph.output, *graph.value_info, *graph.initializer):
        _clear_records(item)
    _clear_nodes(graph.node)


def without_build_records(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``proto`` without the exporter's per-node records: the dynamo exporter stores each op's
    Python stack trace (absolute paths of the build machine, and the model's own source lines),
    its module class hierarchy and FX node. onnxruntime needs none of them."""
    _clear_records(proto)
    _clear_graph(proto.graph)
    for function in proto.functions:
        _clear_records(function)
        _clear_nodes(function.node)
    return proto


def _uses_external_data(proto: onnx.ModelProto) -> bool:
    """Whether the graph's initializers or node attributes keep their data in a side file."""
    attributes = (a.t for n in proto.graph.node for a in n.attribute if a.HasField("t"))
    return any(
        external_data_helper.uses_external_data(t) for t in (*proto.graph.initializer, *attributes)
    )


def _inlined(tensor: onnx.TensorProto, base_dir: Path) -> onnx.ModelProto:
    """A model holding only ``tensor`` (its data read from ``base_dir`` when external) as
    its graph's one initializer: serialised after the rest of the model, protobuf appends
    it to the model's initializers when the file is parsed."""
    part = onnx.ModelProto()
    inline = part.graph.initializer.add()
    inline.CopyFrom(tensor)
    if external_data_helper.uses_external_data(inline):
        external_data_helper.load_external_data_for_tensor(inline, str(base_dir))
        inline.data_location = onnx.TensorProto.DEFAULT
        del inline.external_data[:]
    return part


def _save_single_file(
    written: Path, target: Path, metadata: Mapping[str, str] | None = None
) -> bool:
    """Save the exported model to ``target`` as one file, every weight inlined, the
    exporter's build records removed and ``metadata`` set as the model's metadata properties;
    True if it had to inline.

    The graph's initializers are written one at a time after the rest of the model (protobuf
    merges repeated fields of a message written in parts), so that memory holds one tensor
    at a time, not the whole model parsed and serialised (two copies of every weight)."""
    proto = onnx.load(str(written), load_external_data=False)
    external = _uses_external_data(proto)
    initializers = list(proto.graph.initializer)
    del proto.graph.initializer[:]
    external_data_helper.load_external_data_for_model(proto, str(written.parent))  # the rest
    without_build_records(proto)
    onnx.helper.set_model_props(proto, dict(metadata or {}))
    with open(target, "wb") as f:
        f.write(proto.SerializeToString())
        for tensor in initializers:
            f.write(_inlined(tensor, written.parent).SerializeToString())
    return external


def _check_names(proto: onnx.ModelProto, options: ExportOptions, with_key: bool) -> list[str]:
    inits = {t.name for t in proto.graph.initializer}
    inputs = [i.name for i in proto.graph.input if i.name not in inits]
    expected = options.names(with_key)
    if inputs != expected:
        raise ExportError(
            f"The exported ONNX model's inputs are {inputs}, expected {expected}: the exporter "
            "dropped or renamed an input (an input the model never uses is removed). Make every "
            "model input contribute to the output."
        )
    outputs = [o.name for o in proto.graph.output]
    n = min(len(outputs), len(options.output_names))
    if outputs[:n] != options.output_names[:n]:
        raise ExportError(
            f"The exported ONNX model's outputs are {outputs}, expected names "
            f"{options.output_names}. Check onnx_params['output_names']."
        )
    notes = []
    if len(options.output_names) > len(outputs):
        notes.append(
            f"onnx_params['output_names'] has {len(options.output_names)} names, the model "
            f"{len(outputs)} output(s); the extra names were ignored."
        )
    return notes


def _required_dynamic_axes(options: ExportOptions) -> dict[str, list[int]]:
    """The input axes the user made dynamic, by input name (``Dim.AUTO`` lets torch choose,
    so an axis given as ``Dim.AUTO`` is not required to stay dynamic)."""
    if options.dynamic_shapes is None:
        return {name: list(axes) for name, axes in (options.dynamic_axes or {}).items()}
    auto, static = torch.export.Dim.AUTO, torch.export.Dim.STATIC
    return {
        name: [axis for axis, dim in (spec or {}).items() if dim not in (None, auto, static)]
        for name, spec in zip(options.input_names, options.dynamic_shapes, strict=True)
    }


def _check_dynamic_axes(proto: onnx.ModelProto, options: ExportOptions) -> None:
    """Raise :class:`ExportError` when the file fixed a dynamic input axis to its example size.

    The dynamo exporter does so without an error when ``forward`` specialises the size (e.g.
    ``int(x.shape[0])``): onnxruntime then refuses every other size.
    """
    dims = {i.name: list(i.type.tensor_type.shape.dim) for i in proto.graph.input}
    fixed = [
        f"{name}[{axis}] = {dims[name][axis].dim_value}"
        for name, axes in _required_dynamic_axes(options).items()
        for axis in axes
        if dims.get(name) and dims[name][axis].HasField("dim_value")
    ]
    if fixed:
        raise ExportError(
            f"the ONNX file fixed dynamic axes to their example size ({', '.join(fixed)}): the "
            "model's forward() specialises them (e.g. int(x.shape[0]), or a Python branch on a "
            "size). Make forward() work for every size with tensor ops, or leave those axes "
            "out of dynamic_shapes"
        )


def _opset(proto: onnx.ModelProto) -> int | None:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)


@register_exporter(ExportFormat.ONNX)
class OnnxExporter:
    """``torch.onnx.export`` (dynamo) to one ``.onnx`` file; onnxruntime (CPU) to run it."""

    extension = ".onnx"

    def __init__(self, fmt: ExportFormat) -> None:
        self.fmt = fmt

    @one_at_a_time
    def export(
        self,
        module: nn.Module,
        example_inputs: tuple[Tensor, ...],
        path: Path,
        options: ExportOptions,
        *,
        with_key: bool,
    ) -> ExportReport:
        args = check_example_inputs(example_inputs, options, with_key)
        check_fits_one_file(module, "The locked model" if with_key else "The original model")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        extra = dict(options.onnx_extra)
        user_dynamo = extra.pop("dynamo", None)
        attempts = [bool(user_dynamo)] if user_dynamo is not None else [True, False]
        notes: list[str] = []
        start = time.perf_counter()
        used = None
        errors: list[str] = []
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=".onnx-export-") as tmp:
            written = Path(tmp) / path.name
            wanted = extra.get("opset_version")
            for dynamo in attempts:
                try:
                    with collect_warnings(notes, UserWarning) as caught:
                        exported = _torch_onnx_export(
                            module, args, written, options, with_key, dynamo=dynamo, extra=extra
                        )
                    # weights in the side file: the graph without them, read once
                    proto = onnx.load(str(written), load_external_data=False)
                    got = _opset(proto)
                    if wanted is not None and got != wanted:  # torch only logs this
                        raise ExportError(f"it wrote opset {got}, not the requested {wanted}")
                    _check_dynamic_axes(proto, options)
                except OSError as err:  # a full or read-only disk: the other exporter fails too
                    raise ExportError(
                        f"ONNX export could not write to {path.parent} ({err.strerror or err}). "
                        "Free space or check the folder's permissions."
                    ) from err
                except Exception as err:
                    errors.append(f"dynamo={dynamo}: {first_line(err)}")
                    for leftover in Path(tmp).iterdir():
                        leftover.unlink()
                    continue
                used = dynamo
                break
            if used is None:
                raise ExportError(
                    f"ONNX export failed ({'; '.join(errors)}). Check that the model runs with "
                    "input_tensors and that onnx_params holds valid torch.onnx.export arguments."
                )
            if errors:
                notes.insert(
                    0, f"dynamo export failed ({errors[0]}); used the legacy dynamo=False exporter"
                )
            why = f" (The dynamo exporter failed: {errors[0]}.)" if errors else ""
            refuse_baked_values(
                caught, "The legacy ONNX exporter (dynamo=False)", why, instead=_DYNAMO_INSTEAD
            )
            notes += _check_names(proto, options, with_key)
            metadata = options.inputs_record(args, with_key, exported)
            if _save_single_file(written, path, metadata) and not used:  # dynamo: a side file
                notes.append("weights were written as external data; re-saved inlined")
            _check_written_size(path)
        return ExportReport(
            path=path,
            fmt=self.fmt,
            exporter=f"torch.onnx dynamo={used} opset {got}",
            seconds=time.perf_counter() - start,
            notes=notes,
        )

    def load(self, path: Path, options: ExportOptions) -> Runner:
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]

        def run(inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
            if len(inputs) != len(names):
                raise InvalidArgumentError(
                    f"The ONNX model {Path(path).name} takes {len(names)} input(s) ({names}), but "
                    f"got {len(inputs)}. Pass the model inputs, then the key."
                )
            feed = {n: np.asarray(x) for n, x in zip(names, inputs, strict=True)}
            return list(session.run(None, feed))

        return run
