"""Int8 quantization of a protected ONNX model with ONNX Runtime's own tools.

A model protected with ``quantize_compatibility=True`` quantizes like its original once three
things are taken care of, which :func:`quantize_protected_onnx` does: the key path (the
``key_vector`` input, the in-graph decoder and the nodes that apply the decoded indices and
scales) stays float, the lock's public orthogonal mixing ops stay float, and static calibration
feeds the key in every batch. :func:`quantize_original_onnx` quantizes the unprotected original's
export with the same settings, to measure what the protection costs once both are int8.

Needs ``onnx`` and ``onnxruntime`` (the ``protect`` extra); they are imported on first use, so
this module imports without them and says what to install when a function is called.
"""

from __future__ import annotations

import os
import platform
import time
import uuid
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import numpy as np

from .errors import InvalidArgumentError, VerificationError
from .extras import missing_modules

__all__ = [
    "QuantizationReport",
    "check_key_not_quantized",
    "int8_saturates",
    "quantize_original_onnx",
    "quantize_protected_onnx",
]

KEY_NAME = "key_vector"
"""The protected ONNX model's key input (the exporter's ``DEFAULT_KEY_NAME``)."""
MODES = ("static", "dynamic")
FLOAT_OUTPUT_OPS = ["Conv", "Gemm", "MatMul"]
"""Static mode with ``float_layer_outputs``: ORT's ``OpTypesToExcludeOutputQuantization``."""
DEFAULT_CALIBRATION_BATCH = 64
QUANTIZATION_MODULES = ("onnx", "onnxruntime")
_QUANTIZE_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")


@dataclass(frozen=True)
class QuantizationReport:
    """What one quantization wrote and left float, for logs and checks."""

    output_path: Path
    mode: str
    per_channel: bool
    reduce_range: bool
    key_nodes: tuple[str, ...]
    """Nodes on the key path, left float (none for an original)."""
    mixing_nodes: tuple[str, ...]
    """The lock's public mixing ops found; left float unless ``quantize_mixing``."""
    excluded_nodes: tuple[str, ...]
    """Everything passed to ONNX Runtime's ``nodes_to_exclude``."""
    int8_weights: int
    """Weight tensors the quantized model stores as 8-bit integers."""
    calibration_batches: int
    """Batches fed to static calibration (0 in dynamic mode)."""
    seconds: float


# ---------------------------------------------------------------------------------------------
# public functions


def quantize_protected_onnx(
    model_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    mode: str,
    key: np.ndarray | None = None,
    calibration_inputs: np.ndarray | Mapping[str, np.ndarray] | None = None,
    per_channel: bool = True,
    reduce_range: bool | None = None,
    quantize_mixing: bool = False,
    float_layer_outputs: bool = True,
    calibration_batch: int = DEFAULT_CALIBRATION_BATCH,
    preprocess: bool = True,
) -> QuantizationReport:
    """Quantize a protected ``.onnx`` file to int8 with ``onnxruntime.quantization``, its key
    path and the lock's public mixing left float, and check that no key node was quantized.

    Args:
        model_path: the protected ONNX model (its last input is ``key_vector``).
        output_path: where the int8 model goes; written whole or not at all (through a
            symbolic link, into the file it points to).
        mode: ``"static"`` (QDQ, int8 activations, calibrated with ``key``) or ``"dynamic"``
            (int8 weights, activation ranges computed at run time; no key, no calibration).
        key: the key the model will run with, e.g.
            ``skruntime.keyfile.read_txt_keys(folder, model_name).static_key()``; required
            for static mode (it is fed with every calibration batch), checked if given.
        calibration_inputs: static mode: representative model inputs, samples along axis 0; an
            array for a model with one input besides the key, else ``{input name: array}``.
        per_channel: one scale per output channel of each weight (more accurate).
        reduce_range: 7-bit weights; ``None`` turns it on where onnxruntime's int8 GEMM can
            saturate (:func:`int8_saturates`: x86 without VNNI).
        quantize_mixing: also quantize the lock's public mixing ops (less accurate).
        float_layer_outputs: static mode: keep Conv/Gemm/MatMul outputs float.
        calibration_batch: samples per calibration batch (a model with a fixed batch size is
            fed batches of that size).
        preprocess: run ``quant_pre_process`` first (set ``False`` for a file already
            pre-processed).

    Raises:
        InvalidArgumentError: an argument is wrong (the message says what to pass).
        VerificationError: onnxruntime quantized a key-path node; nothing is written.
        ModuleNotFoundError: onnx or onnxruntime is missing (``pip install 'skprotect[protect]'``).
    """
    _require_modules("quantize_protected_onnx")
    return _quantize(
        model_path,
        output_path,
        protected=True,
        mode=mode,
        key=key,
        calibration_inputs=calibration_inputs,
        per_channel=per_channel,
        reduce_range=reduce_range,
        quantize_mixing=quantize_mixing,
        float_layer_outputs=float_layer_outputs,
        calibration_batch=calibration_batch,
        preprocess=preprocess,
    )


def quantize_original_onnx(
    model_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    mode: str,
    calibration_inputs: np.ndarray | Mapping[str, np.ndarray] | None = None,
    per_channel: bool = True,
    reduce_range: bool | None = None,
    float_layer_outputs: bool = True,
    calibration_batch: int = DEFAULT_CALIBRATION_BATCH,
    preprocess: bool = True,
) -> QuantizationReport:
    """Quantize the unprotected original's ONNX export exactly as :func:`quantize_protected_onnx`
    does the protected one, so that their accuracies compare (what the protection costs in int8).

    Arguments and errors as for :func:`quantize_protected_onnx`; a file with a ``key_vector``
    input is refused.
    """
    _require_modules("quantize_original_onnx")
    return _quantize(
        model_path,
        output_path,
        protected=False,
        mode=mode,
        key=None,
        calibration_inputs=calibration_inputs,
        per_channel=per_channel,
        reduce_range=reduce_range,
        quantize_mixing=False,
        float_layer_outputs=float_layer_outputs,
        calibration_batch=calibration_batch,
        preprocess=preprocess,
    )


def check_key_not_quantized(model_path: str | os.PathLike[str]) -> list[str]:
    """Problems found in a quantized model: (de)quantize nodes that read the key or a tensor
    decoded from it (a quantized key decodes to wrong indices and scales). Empty when none."""
    _require_modules("check_key_not_quantized")
    if not isinstance(model_path, str | os.PathLike) or not str(model_path):
        raise InvalidArgumentError(f"model_path must be a file path, got {model_path!r}.")
    path = Path(model_path)
    graph = _load_graph(path, "the quantized model's .onnx file")
    if KEY_NAME not in {i.name for i in graph.input}:
        # an empty list would read "the key path is float" for a model that has none
        raise InvalidArgumentError(
            f"{path} has no {KEY_NAME!r} input, so it is not a protected model and has no key "
            "path to check: pass the quantized protected model."
        )
    return _key_problems(graph)


def int8_saturates() -> bool:
    """Whether onnxruntime's int8 GEMMs can saturate here: an x86 CPU without VNNI, where the
    u8×s8 kernel (VPMADDUBSW) sums pairs of products in int16; full-range int8 weights then
    overflow, and quantizing with ``reduce_range=True`` (7-bit weights) avoids it."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True  # cannot tell: assume the common AVX2 case
    return "vnni" not in flags


def preprocess_onnx(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """ORT's recommended ``quant_pre_process`` (shape inference, graph optimisation such as
    BatchNorm folding) from ``src`` to ``dst``, then :func:`untranspose_gemm_inputs`."""
    _require_modules("preprocess_onnx")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(src), str(dst))
    untranspose_gemm_inputs(dst)
    return Path(dst)


def untranspose_gemm_inputs(path: str | os.PathLike[str]) -> int:
    """Rewrite, in place, every ``Gemm(transA=1)`` as ``Transpose`` + ``Gemm(transA=0)``, and
    every Gemm whose weight is its first input as ``Transpose`` + ``Gemm`` + ``Transpose`` with
    the weight second.

    The lock's channel-first linear layout ends in a Transpose that ORT's graph optimiser folds
    into the next Gemm as ``transA=1``; ORT's dynamic quantizer only handles Gemms with
    ``transA=0`` (it rewrites them to MatMul) and silently leaves the others in float. Its
    ``GemmTransposeFusion`` also folds a locked linear's output Transpose into the Gemm itself
    (``(x Wᵀ)ᵀ = W xᵀ``, as in a locked MultiheadAttention's projections), which moves the
    weight to the first input, where ORT's quantizers leave it float (dynamic) or per-tensor
    (static; until 2026-12-07). Returns the number of Gemms rewritten (usually none in an
    original).
    """
    import onnx
    from onnx import helper, numpy_helper

    proto = onnx.load(str(path))
    graph = proto.graph
    constants = graph_constants(graph)
    nodes = []
    count = 0
    for node in graph.node:
        attributes = {a.name: a for a in node.attribute}
        if node.op_type != "Gemm":
            nodes.append(node)
            continue
        trans_a = attributes.get("transA")
        if _weight_first(node, constants):
            # Y = op(W) op(X) + C  ->  Y = (op(X)ᵀ op(W)ᵀ + Cᵀ)ᵀ, with op(X)ᵀ made explicit
            weight, data = node.input[0], node.input[1]
            trans_b = attributes.get("transB")
            data_t = bool(trans_b is not None and trans_b.i)
            weight_t = bool(trans_a is not None and trans_a.i)
            first = data
            if not data_t:
                first = f"{data}_untransposed_{count}"
                nodes.append(
                    helper.make_node("Transpose", [data], [first], name=f"{node.name}_transB")
                )
            inputs = [first, weight]
            if len(node.input) > 2 and node.input[2]:
                bias = constants[node.input[2]]
                bias = bias.reshape((1,) * (2 - bias.ndim) + bias.shape).T
                inputs.append(f"{node.input[2]}_transposed_{count}")
                graph.initializer.append(numpy_helper.from_array(bias, inputs[-1]))
            product = f"{node.output[0]}_transposed_{count}"
            swapped = helper.make_node(
                "Gemm",
                inputs,
                [product],
                name=f"{node.name}_weight_second",
                alpha=attributes["alpha"].f if "alpha" in attributes else 1.0,
                beta=attributes["beta"].f if "beta" in attributes else 1.0,
                transA=0,
                transB=int(not weight_t),
            )
            nodes.append(swapped)
            nodes.append(
                helper.make_node(
                    "Transpose", [product], [node.output[0]], name=f"{node.name}_transpose"
                )
            )
            count += 1
            continue
        if trans_a is not None and trans_a.i == 1:
            transposed = f"{node.input[0]}_untransposed_{count}"
            nodes.append(
                helper.make_node(
                    "Transpose", [node.input[0]], [transposed], name=f"{node.name}_transA"
                )
            )
            node.input[0] = transposed
            trans_a.i = 0
            count += 1
        nodes.append(node)
    if count:
        del graph.node[:]
        graph.node.extend(nodes)
        onnx.save(proto, str(path))
    return count


def _weight_first(node: Any, constants: Mapping[str, np.ndarray]) -> bool:
    """Whether a Gemm's first input is a constant 2-D weight and its second is not (and its
    bias, if any, is constant): a layer whose weight ORT's quantizers would not take."""
    a, b = (constants.get(i) for i in node.input[:2])
    bias = node.input[2] if len(node.input) > 2 else ""
    return a is not None and a.ndim == 2 and b is None and (not bias or bias in constants)


# ---------------------------------------------------------------------------------------------
# graph analysis


def key_tensors(graph: Any, key_name: str = KEY_NAME) -> set[str]:
    """Tensors computed from the key alone (with constants): the key and its decoded parts."""
    return _keyed_and_constants(graph, key_name, (set(), set()))[0]


def _keyed_and_constants(
    graph: Any, key_name: str, outer: tuple[set[str], set[str]]
) -> tuple[set[str], set[str]]:
    """:func:`key_tensors` and the constant tensors of ``graph``, given ``outer``: those of the
    enclosing graph, which a subgraph (a Scan, Loop or If body) reads by name."""
    constants = {t.name for t in graph.initializer} | outer[1]
    keyed = {key_name} | outer[0]
    changed = True
    while changed:  # a fixed point, so that node order does not matter
        changed = False
        for node in graph.node:
            dynamic = [i for i in node.input if i and i not in constants]
            if node.op_type == "Constant" or not dynamic:
                new = set(node.output) - constants
                constants |= new
                changed |= bool(new)
            elif all(i in keyed for i in dynamic) and not set(node.output) <= keyed:
                keyed.update(node.output)
                changed = True
    return keyed, constants


def key_nodes(graph: Any, key_name: str = KEY_NAME) -> list[str]:
    """Nodes that read the key or anything decoded from it: the key decoder (Reshape, Pad,
    Slice, Round, Mod, Cast, Clip, Split, the scale product ``u*v``) and the Gather/Mul nodes
    that apply the decoded indices and scales to activations."""
    keyed = key_tensors(graph, key_name)
    return [n.name for n in graph.node if any(i in keyed for i in n.input)]


def graph_constants(graph: Any) -> dict[str, np.ndarray]:
    """Initializers and Constant-node values of a graph, by tensor name."""
    from onnx import numpy_helper

    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _orthogonal_blocks(w: np.ndarray, conv_groups: int | None = None, tol: float = 1e-4) -> bool:
    """True if ``w`` is one or a stack of square orthogonal matrices (a MatMul/Gemm weight), or,
    with ``conv_groups``, a 1x1 (grouped) conv kernel made of them."""
    if conv_groups is not None:
        if w.ndim < 3 or any(d != 1 for d in w.shape[2:]) or w.shape[0] % conv_groups:
            return False
        w = w.reshape(conv_groups, w.shape[0] // conv_groups, w.shape[1])
    elif w.ndim == 2:
        w = w[None]
    if w.ndim != 3 or w.shape[1] != w.shape[2] or w.shape[1] < 2:
        return False
    blocks = w.astype(np.float64)
    gram = blocks @ blocks.transpose(0, 2, 1)
    return bool(np.abs(gram - np.eye(w.shape[1])).max() < tol)


def is_mixing_node(node: Any, constants: Mapping[str, np.ndarray]) -> bool:
    """True for a MatMul/Gemm/Conv whose constant weight is (block-)orthogonal: the lock's
    public mixing and un-mixing ops (no trained layer has an exactly orthogonal weight)."""
    if node.op_type == "Conv":
        groups = next((a.i for a in node.attribute if a.name == "group"), 1)
        w = constants.get(node.input[1])
        return w is not None and _orthogonal_blocks(w, conv_groups=groups)
    if node.op_type in ("MatMul", "Gemm"):
        ws = [constants.get(i) for i in node.input[:2]]
        return any(w is not None and _orthogonal_blocks(w) for w in ws)
    return False


def _batched_weight_matmuls(graph: Any, constants: Mapping[str, np.ndarray]) -> list[str]:
    """MatMul nodes with a constant weight of rank > 2 (the lock's uniform block un-mix)."""
    return [
        n.name
        for n in graph.node
        if n.op_type == "MatMul" and any(i in constants and constants[i].ndim > 2 for i in n.input)
    ]


def _key_problems(graph: Any, outer: tuple[set[str], set[str]] = (set(), set())) -> list[str]:
    """(De)quantize nodes of ``graph`` and of its subgraphs (the body of a Scan, as an LSTM
    exports, a Loop or an If) that read the key or a tensor decoded from it: a body reads the
    decoded indices and scales by name (until 2026-12-07 only the main graph was checked)."""
    known = _keyed_and_constants(graph, KEY_NAME, outer)
    problems = [
        f"{n.op_type} {n.name} reads key-derived {n.input[0]}"
        for n in graph.node
        if n.op_type in _QUANTIZE_OPS and n.input[0] in known[0]
    ]
    for node in graph.node:
        for attribute in node.attribute:
            for body in (*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs):
                problems += _key_problems(body, known)
    return problems


def _int8_weights(graph: Any) -> int:
    """Initializers stored as 8-bit integers (quantized weights, not zero points)."""
    from onnx import TensorProto

    eight_bit = (TensorProto.INT8, TensorProto.UINT8)
    return sum(
        t.data_type in eight_bit and len(t.dims) >= 2 and not t.name.endswith("zero_point")
        for t in graph.initializer
    )


# ---------------------------------------------------------------------------------------------
# validation


@dataclass(frozen=True)
class _Input:
    """One model input: name, numpy dtype and shape (``None`` for a symbolic dimension)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...] | None
    """``None`` where the model does not declare the input's shape."""


def _require_modules(function: str) -> None:
    """Fail with what to install when onnx or onnxruntime is missing (``skprotect[protect]``)."""
    missing = missing_modules(QUANTIZATION_MODULES)
    if missing:
        raise ModuleNotFoundError(
            f"{function} needs {', '.join(missing)}, not installed here: "
            "pip install 'skprotect[protect]'."
        )


def _check_flag(name: str, value: object, *, optional: bool = False) -> None:
    """Refuse a flag that is not a bool (``1`` or ``"auto"`` would be read as true)."""
    if not (isinstance(value, bool) or (optional and value is None)):
        allowed = "True, False or None" if optional else "True or False"
        raise InvalidArgumentError(f"{name} must be {allowed}, got {value!r}.")


def _load_graph(model_path: Path, wanted: str) -> Any:
    """The graph of the ONNX model at ``model_path``, refused with what to pass (``wanted``)
    when it is missing, unreadable or not an ONNX model."""
    import onnx

    if not model_path.is_file():
        raise InvalidArgumentError(f"model_path {model_path} is not a file: pass {wanted}.")
    try:
        proto = onnx.load(str(model_path))
    except Exception as err:  # onnx raises DecodeError, ValueError, ... for a non-ONNX file
        raise InvalidArgumentError(
            f"model_path {model_path} is not an ONNX model ({type(err).__name__}: {err}): pass "
            f"{wanted}."
        ) from None
    if not proto.opset_import or not proto.graph.node:
        # an empty file (or a few stray bytes) parses as an empty ModelProto
        raise InvalidArgumentError(
            f"model_path {model_path} is not an ONNX model (empty, or no graph nodes or "
            f"opset): pass {wanted}."
        )
    return proto.graph


def _model_inputs(model_path: Path, protected: bool) -> tuple[list[_Input], _Input | None]:
    """The inputs of the ONNX model at ``model_path`` besides the key, and its key input."""
    from onnx import helper

    graph = _load_graph(
        model_path,
        "the protected model's .onnx file (outputs/<app>/<model>/onnx/<model>.onnx)"
        if protected
        else "the original model's .onnx export",
    )
    constants = {t.name for t in graph.initializer}
    inputs = []
    for value in graph.input:
        if value.name in constants:
            continue
        tensor = value.type.tensor_type
        shape = (
            tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)
            if tensor.HasField("shape")
            else None
        )
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type))
        inputs.append(_Input(value.name, dtype, shape))
    key = next((i for i in inputs if i.name == KEY_NAME), None)
    if protected and key is None:
        raise InvalidArgumentError(
            f"{model_path} has no {KEY_NAME!r} input, so it is not a protected ONNX model "
            f"(inputs: {', '.join(i.name for i in inputs) or 'none'}). Pass the .onnx file "
            "protect_new_model wrote, or quantize an unprotected model with "
            "quantize_original_onnx."
        )
    if not protected and key is not None:
        raise InvalidArgumentError(
            f"{model_path} has a {KEY_NAME!r} input: it is a protected model. Quantize it with "
            "quantize_protected_onnx, which keeps its key path float."
        )
    if protected and _conditioned_mixing(graph):
        warnings.warn(  # not refused: some models lose little (the tabular MLP: 4-10 points)
            f"{model_path} was protected without quantize_compatibility=True: its lock's public "
            "mixing blocks are not orthogonal, so its locked weights and activations span "
            "wider ranges than the original's, and int8 may lose most of its accuracy (the "
            "digits CNN: 99.17 % in float, 13.70-55.56 % in int8; docs/benchmarks.md, "
            "Quantization). Protect the model again with quantize_compatibility=True and "
            "quantize that file.",
            RuntimeWarning,
            stacklevel=4,  # the caller of quantize_protected_onnx
        )
    return [i for i in inputs if i.name != KEY_NAME], key


def _conditioned_mixing(graph: Any) -> bool:
    """Whether the protected ``graph`` holds the lock's mixing blocks (square blocks of a
    rank-3 MatMul weight or of a 1x1 conv, grouped or not) and none is orthogonal
    (:func:`is_mixing_node`): a lock without ``quantize_compatibility``, whose mixing has
    condition number 16 (orthogonal with it). A convolutional model's mixing is 1x1 convs only
    (missed before 2026-12-07)."""
    constants = graph_constants(graph)
    found = [is_mixing_node(n, constants) for n in graph.node if _block_shaped(n, constants)]
    return bool(found) and not any(found)


def _block_shaped(node: Any, constants: Mapping[str, np.ndarray]) -> bool:
    """Whether ``node`` has the lock's mixing shape: a MatMul with a constant stack of square
    blocks, or a 1x1 conv whose kernel is square blocks (one per group)."""
    if node.op_type == "MatMul":
        return any(
            (w := constants.get(i)) is not None and w.ndim == 3 and w.shape[1] == w.shape[2] > 1
            for i in node.input
        )
    if node.op_type != "Conv" or (w := constants.get(node.input[1])) is None:
        return False
    groups = next((a.i for a in node.attribute if a.name == "group"), 1)
    return (
        w.ndim >= 3
        and w.shape[1] > 1
        and all(d == 1 for d in w.shape[2:])
        and w.shape[0] == w.shape[1] * groups
    )


def _check_output(model_path: Path, output_path: Path) -> None:
    """Refuse an output that would overwrite the input, is a folder, or has no folder."""
    if output_path.resolve() == model_path.resolve() or (
        output_path.exists() and os.path.samefile(output_path, model_path)
    ):
        raise InvalidArgumentError(
            f"output_path {output_path} is the model itself: pass another path, e.g. "
            f"{model_path.with_suffix('.int8.onnx')}."
        )
    if output_path.is_dir():
        raise InvalidArgumentError(
            f"output_path {output_path} is a folder: pass a file path such as "
            f"{output_path / model_path.with_suffix('.int8.onnx').name}."
        )
    if not output_path.parent.is_dir():
        raise InvalidArgumentError(
            f"output_path's folder {output_path.parent} does not exist: create it first or "
            "pass a path in an existing folder."
        )


def _check_key(key: object, key_input: _Input) -> np.ndarray:
    """The key as the model's key dtype, after checking its type, length and values."""
    hint = "pass read_txt_keys(folder, model_name).static_key() (skruntime.keyfile)"
    if not isinstance(key, np.ndarray):
        raise InvalidArgumentError(f"key must be a numpy array, got {type(key).__name__}: {hint}.")
    shape = key_input.shape
    length = shape[0] if shape is not None and len(shape) == 1 else None
    if key.ndim != 1:
        raise InvalidArgumentError(f"key must be 1-D, got shape {key.shape}: {hint}.")
    if length is not None and key.shape[0] != length:
        raise InvalidArgumentError(
            f"key has shape {key.shape}, but this model's {KEY_NAME} input takes "
            f"({length},): it is another model's key; {hint}, "
            "with the folder and name of this model."
        )
    if not np.issubdtype(key.dtype, np.floating) or not np.isfinite(key).all():
        raise InvalidArgumentError(
            f"key must hold finite floating-point values (got dtype {key.dtype}): {hint}."
        )
    return np.ascontiguousarray(key, dtype=key_input.dtype)


def _calibration_batches(
    calibration: object, inputs: list[_Input], batch: int
) -> list[dict[str, np.ndarray]]:
    """The calibration feeds (without the key), after checking ``calibration`` against the
    model's inputs (names, dtypes, ranks, fixed dimensions, a common number of samples).

    A model exported with a fixed batch size gets batches of that size (the samples left over
    are not fed); a dynamic batch dimension gets batches of ``batch``, the last one smaller."""
    names = [i.name for i in inputs]
    if isinstance(calibration, np.ndarray):
        if len(inputs) != 1:
            raise InvalidArgumentError(
                f"calibration_inputs is one array, but the model has {len(inputs)} inputs "
                f"besides the key: pass {{name: array}} for {', '.join(names)}."
            )
        calibration = {names[0]: calibration}
    if not isinstance(calibration, Mapping):
        raise InvalidArgumentError(
            "calibration_inputs must be a numpy array (one model input) or a dict "
            f"{{input name: array}}, got {type(calibration).__name__}."
        )
    if set(calibration) != set(names):
        raise InvalidArgumentError(
            f"calibration_inputs names {sorted(map(str, calibration))}, but the model's inputs "
            f"besides the key are {names}: pass one array per input, under these names."
        )
    arrays = {}
    for spec in inputs:
        array = calibration[spec.name]
        where = f"calibration_inputs[{spec.name!r}]"
        if not isinstance(array, np.ndarray):
            raise InvalidArgumentError(
                f"{where} must be a numpy array, got {type(array).__name__}."
            )
        if array.ndim == 0:
            raise InvalidArgumentError(
                f"{where} is a scalar: pass samples along the first axis, shaped like the input."
            )
        shape = spec.shape
        if shape is not None and (
            array.ndim != len(shape)
            or any(
                d is not None and d != a for d, a in zip(shape[1:], array.shape[1:], strict=True)
            )
        ):
            expected = tuple("n" if d is None else d for d in shape)
            raise InvalidArgumentError(
                f"{where} has shape {array.shape}, the model's input takes {expected} (samples "
                "along the first axis): pass inputs shaped like the model's."
            )
        if array.dtype != spec.dtype:
            raise InvalidArgumentError(
                f"{where} has dtype {array.dtype}, the model's input takes {spec.dtype}: pass "
                f"array.astype(np.{spec.dtype.name})."
            )
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            raise InvalidArgumentError(f"{where} holds NaN or infinite values: remove them.")
        arrays[spec.name] = np.ascontiguousarray(array)
    counts = {len(a) for a in arrays.values()}
    if len(counts) != 1:
        raise InvalidArgumentError(
            "calibration_inputs arrays have different numbers of samples "
            f"({ {n: len(a) for n, a in arrays.items()} }): pass the same samples for each input."
        )
    (count,) = counts
    fixed = {i.shape[0] for i in inputs if i.shape and i.shape[0]}
    if fixed:
        batch = min(fixed)
    if count < (batch if fixed else 1):
        raise InvalidArgumentError(
            f"calibration_inputs has {count} samples, fewer than the model's batch of {batch}: "
            "pass more (a few hundred representative inputs)."
        )
    stop = count - batch + 1 if fixed else count
    return [
        {name: a[start : start + batch] for name, a in arrays.items()}
        for start in range(0, stop, batch)
    ]


# ---------------------------------------------------------------------------------------------
# quantizing


def _calibration_reader(batches: list[dict[str, np.ndarray]], key: np.ndarray | None) -> Any:
    """ORT's ``CalibrationDataReader`` over ``batches``, each fed with ``key`` (when not None):
    the protected model computes with the key it will run with."""
    from onnxruntime.quantization import CalibrationDataReader

    def feeds() -> Iterator[dict[str, np.ndarray]]:
        for batch in batches:
            yield batch if key is None else {**batch, KEY_NAME: key}

    class Reader(CalibrationDataReader):  # ORT checks isinstance
        def __init__(self) -> None:
            self.batches = feeds()

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

        def rewind(self) -> None:
            self.batches = feeds()

    return Reader()


def _quantize(
    model_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    protected: bool,
    mode: str,
    key: object,
    calibration_inputs: object,
    per_channel: bool,
    reduce_range: bool | None,
    quantize_mixing: bool,
    float_layer_outputs: bool,
    calibration_batch: int,
    preprocess: bool,
) -> QuantizationReport:
    """Validate every argument, then quantize into a temporary file renamed to ``output_path``
    once the key path is checked float."""
    started = time.perf_counter()
    if not isinstance(mode, str) or mode not in MODES:
        raise InvalidArgumentError(f"mode must be 'static' or 'dynamic', got {mode!r}.")
    for name, value in (
        ("per_channel", per_channel),
        ("quantize_mixing", quantize_mixing),
        ("float_layer_outputs", float_layer_outputs),
        ("preprocess", preprocess),
    ):
        _check_flag(name, value)
    _check_flag("reduce_range", reduce_range, optional=True)
    if isinstance(calibration_batch, bool) or not isinstance(calibration_batch, int):
        raise InvalidArgumentError(
            f"calibration_batch must be an int >= 1, got {calibration_batch!r}."
        )
    if calibration_batch < 1:
        raise InvalidArgumentError(f"calibration_batch must be >= 1, got {calibration_batch}.")
    for name, path in (("model_path", model_path), ("output_path", output_path)):
        if not isinstance(path, str | os.PathLike) or not str(path):
            raise InvalidArgumentError(f"{name} must be a file path, got {path!r}.")
    source, output = Path(model_path), Path(output_path)
    inputs, key_input = _model_inputs(source, protected)
    # a link is written through, as onnx.save does (replaced by a file until 2026-12-07)
    try:
        target = Path(os.path.realpath(output, strict=True)) if output.is_symlink() else output
    except FileNotFoundError:  # a dangling link: written through, into its target's folder
        target = Path(os.path.realpath(output))
    except OSError as err:  # a link loop (ELOOP) raised RuntimeError from resolve() below
        raise InvalidArgumentError(
            f"output_path {output} is a symbolic link that cannot be followed "
            f"({err.strerror}): pass a file path, or a link to one."
        ) from None
    _check_output(source, target)
    checked_key = None
    if key is not None and key_input is not None:
        checked_key = _check_key(key, key_input)
    batches: list[dict[str, np.ndarray]] = []
    if mode == "static":
        if protected and checked_key is None:
            raise InvalidArgumentError(
                "mode='static' calibrates the protected model with the key it will run with: "
                "pass key=read_txt_keys(folder, model_name).static_key() (skruntime.keyfile), "
                "or use mode='dynamic', which needs no key."
            )
        if calibration_inputs is None:
            raise InvalidArgumentError(
                "mode='static' needs calibration_inputs: a few hundred representative model "
                "inputs (samples along axis 0), or use mode='dynamic', which needs none."
            )
        batches = _calibration_batches(calibration_inputs, inputs, calibration_batch)
    elif calibration_inputs is not None:
        raise InvalidArgumentError(
            "mode='dynamic' takes no calibration_inputs (activation ranges are computed at run "
            "time): leave them out, or use mode='static'."
        )
    reduce_range = int8_saturates() if reduce_range is None else reduce_range

    # Reserve the output's temporary name first: an unwritable folder fails before any work.
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.partial.onnx")
    try:
        partial.open("xb").close()
    except OSError as err:
        raise InvalidArgumentError(
            f"cannot write in output_path's folder {target.parent} ({err.strerror}): pass an "
            "output_path in a folder you can write."
        ) from None
    try:
        with TemporaryDirectory(prefix="skprotect-quantize-") as tmp:
            src = preprocess_onnx(source, Path(tmp) / "model.pre.onnx") if preprocess else source
            report = _run_onnxruntime(
                src,
                partial,
                mode=mode,
                key=checked_key,
                batches=batches,
                per_channel=per_channel,
                reduce_range=reduce_range,
                quantize_mixing=quantize_mixing,
                float_layer_outputs=float_layer_outputs,
            )
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return QuantizationReport(
        output_path=output,
        mode=mode,
        per_channel=per_channel,
        reduce_range=reduce_range,
        seconds=time.perf_counter() - started,
        **report,
    )


def _run_onnxruntime(
    src: Path,
    dst: Path,
    *,
    mode: str,
    key: np.ndarray | None,
    batches: list[dict[str, np.ndarray]],
    per_channel: bool,
    reduce_range: bool,
    quantize_mixing: bool,
    float_layer_outputs: bool,
) -> dict[str, Any]:
    """Quantize ``src`` into ``dst`` with ``onnxruntime.quantization`` and check the result;
    the report's fields that this step finds."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    graph = onnx.load(str(src)).graph
    constants = graph_constants(graph)
    keyed = key_nodes(graph)
    mixing = [n.name for n in graph.node if is_mixing_node(n, constants)]
    exclude = list(keyed)
    if not quantize_mixing:
        exclude += [n for n in mixing if n not in exclude]
    if mode == "dynamic":
        # DynamicQuantizeMatMul rejects per-channel zero points of a rank-3 weight at run time
        exclude += [n for n in _batched_weight_matmuls(graph, constants) if n not in exclude]
        quantize_dynamic(
            str(src),
            str(dst),
            per_channel=per_channel,
            reduce_range=reduce_range,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=exclude,
        )
    else:
        quantize_static(
            str(src),
            str(dst),
            _calibration_reader(batches, key),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            reduce_range=reduce_range,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=exclude,
            extra_options=(
                {"OpTypesToExcludeOutputQuantization": FLOAT_OUTPUT_OPS}
                if float_layer_outputs
                else {}
            ),
        )
    quantized = onnx.load(str(dst)).graph
    problems = _key_problems(quantized)
    if problems:
        # dynamic quantization leaves the key alone as a rule: the other mode is no way out
        other = ", or use mode='dynamic'" if mode == "static" else ""
        raise VerificationError(
            f"onnxruntime quantized the key path of {src.name} ({'; '.join(problems[:3])}): the "
            "model would decode a wrong key. Nothing was written; report this with your "
            f"onnxruntime version{other}."
        )
    return {
        "key_nodes": tuple(keyed),
        "mixing_nodes": tuple(mixing),
        "excluded_nodes": tuple(exclude),
        "int8_weights": _int8_weights(quantized),
        "calibration_batches": len(batches),
    }
