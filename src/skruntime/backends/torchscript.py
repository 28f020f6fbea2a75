"""TorchScript backend: ``.pt`` files (traced and frozen by the protector), CPU or CUDA.

TorchScript itself checks little: a traced graph accepts a key of the wrong length or dtype and
computes garbage (or reads past a slice) without an error. Files written by skprotect carry
their inputs' dtypes, static sizes and dynamic ranges in the extra file
:data:`~.inputs.INPUTS_METADATA`, checked before every call like AOTInductor packages; a
``.pt`` without it is run unchecked, and any error torch raises is reported as a
:class:`~skruntime.errors.BackendError` naming the file.

A file runs on either kind of device, its weights moved there, unless its code is bound to a
device (:func:`device_problem`): it is then refused when loaded for another one.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from ..errors import BackendError
from .base import BackendOptions, ModelFile
from .gpu import cuda_index
from .inductor import (
    TensorIO,
    backend_failure,
    check_inputs,
    check_torch_options,
    load_settings,
)
from .inputs import INPUTS_METADATA, parse_specs

__all__ = ["CudaTracedTorchScriptBackend", "TorchScriptBackend"]

_SESSION_OPTIONS = ("optimize_for_inference",)


#: op name prefixes whose kernels exist for one kind of device only: ``optimize_for_inference``
#: fuses a frozen CUDA graph's convolutions into cuDNN ops (``aten::cudnn_convolution_relu``),
#: and a CPU graph's into MKLDNN or XNNPACK ones
_DEVICE_OPS = {
    "cuda": ("aten::cudnn_", "aten::_cudnn_", "aten::miopen_"),
    "cpu": ("aten::mkldnn_", "aten::to_mkldnn", "prim::mkldnn_", "prim::MKLDNN", "prepacked::"),
}


def _graphs(module: torch.jit.ScriptModule) -> Iterator[Any]:
    """The graph of every method of ``module`` and its submodules (a frozen module has its
    calls inlined into ``forward``; a scripted one calls the others' methods)."""
    for sub in module.modules():
        methods = getattr(sub, "_c", None)  # a container (ModuleList) has no methods
        for name in methods._method_names() if methods is not None else ():
            yield methods._get_method(name).graph


def _nodes(block: Any) -> Iterator[Any]:
    """Every node of a graph or block, those of nested blocks (``if``, loops) included."""
    for node in block.nodes():
        yield node
        for inner in node.blocks():
            yield from _nodes(inner)


def _node_problem(
    node: Any, target: torch.device, traced_on_cuda: bool
) -> tuple[str, torch.device] | None:
    """Why ``node`` cannot run on ``target`` and the device it needs, or None."""
    kind = node.kind()
    if kind == "prim::Constant" and node.output().type().kind() == "DeviceObjType":
        made = node.output().toIValue()
        if (
            made.type not in ("cpu", "cuda")
            or (made.type == target.type and (made.index is None or made.index == target.index))
            # a trace on CUDA ran its CPU-made tensors beside CUDA ones (an index tensor, a
            # 0-dim number): they do the same on any GPU
            or (made.type == "cpu" and target.type == "cuda" and traced_on_cuda)
        ):
            return None
        ops = ", ".join(sorted({use.user.kind() for use in node.output().uses()}))
        return f"{ops or 'its code'} creates tensors on {made}", made
    for device, prefixes in _DEVICE_OPS.items():
        if device != target.type and kind.startswith(prefixes):
            where = "CUDA" if device == "cuda" else "the CPU"
            return f"it calls {kind}, which runs only on {where}", torch.device(device)
    return None


def device_problem(
    module: torch.jit.ScriptModule, device: str, *, traced_on_cuda: bool = False
) -> str | None:
    """Why ``module`` cannot run on ``device`` (``"cpu"`` or ``"cuda:N"``) and what to do, or
    None. ``traced_on_cuda``: the file is a ``torchscript_gpu`` one, so tensors its code makes
    on the CPU ran beside CUDA tensors when it was traced, and do again on CUDA (in a file of
    unknown origin, or a CPU trace, they may meet CUDA weights they never met: refused).

    ``map_location`` moves a module's tensors, not its code: a trace records the device of each
    tensor it saw created (``torch.zeros(n)`` on the CPU, ``.to("cuda:0")``) as a constant, and
    a frozen graph optimised on one kind of device holds ops whose kernels exist only there.
    Such a module failed deep inside its first call on another device (torch's
    "PythonDispatcher: registered at ..." or "Expected all tensors to be on the same device"),
    or ran those ops on the device it was traced on (a CPU index tensor read by a CUDA model).
    A module free of both runs on any device, its weights moved there."""
    target = torch.device(device)
    for graph in _graphs(module):
        for node in _nodes(graph):
            if found := _node_problem(node, target, traced_on_cuda):
                problem, needed = found
                formats = (
                    "onnx, torchscript_cpu or inductor_cpu"
                    if target.type == "cpu"
                    else "onnx, torchscript_gpu or inductor_gpu"
                )
                return (
                    f"{problem}. Load it with device='{needed}', or load the model's format "
                    f"for {'the CPU' if target.type == 'cpu' else 'CUDA'} ({formats})"
                )
    return None


def _held_tensors(model: torch.jit.ScriptModule) -> list[torch.Tensor]:
    """The tensors a TorchScript module keeps between calls: its parameters and buffers, and
    the constants a frozen graph holds them as. A model may return one as is (a buffer of
    anchors), and ``.numpy()`` would hand the caller the model's own memory."""
    constants = [
        node.output().toIValue()
        for node in model.graph.findAllNodes("prim::Constant", recurse=True)
        if node.output().type().kind() == "TensorType"
    ]
    return [*model.parameters(), *model.buffers(), *constants]


class TorchScriptBackend:
    """One ``torch.jit.load``-ed module, run under ``torch.inference_mode()``.

    numpy in → numpy out, torch tensors in → ordinary tensors out (decided by the first input;
    :meth:`~.inductor.TensorIO.outputs`); tuple, list and dict outputs are flattened. On CUDA
    (``device="cuda[:N]"``) the GPU settings of
    :func:`~skruntime.backends.gpu.apply_gpu_determinism` are applied first. A load that fails
    puts these and the intra-op thread count back (:func:`~.inductor.load_settings`).

    Threads: ``intra_op_threads`` calls ``torch.set_num_threads`` and ``inter_op_threads``
    ``torch.set_num_interop_threads``; both are **process-wide** (every torch model in the
    process shares them), and the inter-op count can be set only once per process (a different
    value later raises :class:`~skruntime.errors.BackendError`).

    ``session_options``: ``{"optimize_for_inference": True}`` runs
    ``torch.jit.optimize_for_inference`` after loading (MKLDNN convolutions on CPU; the protector
    could not save them). Off by default: it changes float rounding slightly.
    """

    wants_numpy = False
    """The runtime passes torch tensors through (numpy arrays too)."""
    traced_on_cuda = False
    """Whether the files this class loads were traced on CUDA (:func:`device_problem`)."""

    @staticmethod
    def check_options(options: BackendOptions) -> None:
        """Refuse unknown session options and an unusable CUDA device, before any file is read."""
        check_torch_options(options, _SESSION_OPTIONS, "TorchScript")

    def __init__(self, model: ModelFile | str | os.PathLike[str], options: BackendOptions) -> None:
        self.check_options(options)
        model = ModelFile.of(model)
        self._path = model.path
        self.device = "cpu"
        if options.device != "cpu":
            self.device = f"cuda:{cuda_index(options.device)}"
        with load_settings(options, cuda=self.device != "cpu"):  # put back if the load fails
            extra = {INPUTS_METADATA: ""}
            try:
                # the verified bytes, not the path: BytesIO shares them, torch reads them in place
                module = torch.jit.load(
                    io.BytesIO(model.data), map_location=self.device, _extra_files=extra
                )
                if options.session_options.get("optimize_for_inference"):
                    module = torch.jit.optimize_for_inference(module)
            except Exception as err:
                raise BackendError(
                    f"torch could not load the TorchScript file {self._path} "
                    f"({backend_failure(err)}). Re-deploy the file written by skprotect."
                ) from None
            if problem := device_problem(module, self.device, traced_on_cuda=self.traced_on_cuda):
                raise BackendError(
                    f"The TorchScript file {self._path} cannot run on device={options.device!r}: "
                    f"{problem}."
                )
            self._model = module.eval()
            self.input_record: list[dict] | None = None
            """The file's :data:`~.inputs.INPUTS_METADATA` record, parsed (key last); None without
            it. Checked before every call; the runtime compares it with the configuration."""
            self._key_name: str | None = None
            raw = extra[INPUTS_METADATA]
            if raw:
                text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
                self.input_record, self.input_names, self._key_name = parse_specs(
                    text, self._path.name
                )
            else:
                self.input_names = [a.name for a in module.forward.schema.arguments[1:]]  # not self
        self._io = TensorIO(self.device, owned=_held_tensors(module))

    def run(self, inputs: Sequence[Any]) -> list[Any]:
        model = self._model
        name = self._path.name
        if model is None:
            raise BackendError(f"The TorchScript model {name} is closed.")
        if self.input_record is not None:
            check_inputs(
                inputs,
                self.input_record,
                self.input_names,
                name,
                self._key_name,
                kind="TorchScript",
            )
        tensors = self._io.to_device(inputs)
        try:
            with torch.inference_mode():
                out = model(*tensors)
        except Exception as err:
            raise BackendError(
                f"The TorchScript model {name} failed ({backend_failure(err)}). Check the input "
                f"count, shapes and dtypes: it takes {', '.join(self.input_names)}."
            ) from None
        return self._io.outputs(out, inputs, tensors)

    def close(self) -> None:
        self._model = None


class CudaTracedTorchScriptBackend(TorchScriptBackend):
    """The backend of ``torchscript_gpu`` files, which the protector traces on CUDA: tensors
    their code makes on the CPU are accepted on CUDA (:func:`device_problem`)."""

    traced_on_cuda = True
