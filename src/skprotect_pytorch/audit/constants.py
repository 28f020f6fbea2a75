"""Find plaintext weights in shipped artifacts: extract every numeric constant, then match it
against the original weights (DESIGN.md §2: "no file holds a plaintext weight tensor").

>>> constants = artifact_constants(Path("model.onnx"))
>>> leaks = find_weight_leaks(constants, {k: v.numpy() for k, v in model.state_dict().items()})

A constant leaks an original weight when, after a reshape or transposition whose sizes fit, one
of its rows or columns is a rescaled copy (``|cos| > threshold``) of a row or column of that
weight: this catches the weight itself, its transpose, and any copy with rows or columns
permuted and rescaled (what a keyed monomial alone would leave).  Compiled artifacts whose
weights live inside a binary (AOTInductor's ``.so``) are returned as raw ``uint8`` blobs and
searched for the exact float32 bytes of original rows and columns.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from numbers import Real
from pathlib import Path

import numpy as np

from ..errors import InvalidArgumentError
from ..export.base import first_line
from .arguments import INTEGER, require_positive

Extractor = Callable[[Path], dict[str, np.ndarray]]
_EXTRACTORS: dict[str, Extractor] = {}


def _register(*suffixes: str) -> Callable[[Extractor], Extractor]:
    def wrap(fn: Extractor) -> Extractor:
        for s in suffixes:
            _EXTRACTORS[s] = fn
        return fn

    return wrap


def artifact_files(folder: Path) -> list[Path]:
    """The artifacts under ``folder`` (by suffix, sorted), leaving out ``original/`` folders:
    the unlocked copies ``save_original=True`` writes are plaintext by design
    (:func:`unlocked_copies` lists them)."""
    folder = Path(folder)
    return [p for p in _artifacts_under(folder) if not _in_original(p, folder)]


def unlocked_copies(folder: Path) -> list[Path]:
    """The artifacts under ``folder`` in ``original/`` folders (sorted): the unlocked copies
    ``save_original=True`` writes, which hold the original weights and must not ship."""
    folder = Path(folder)
    return [p for p in _artifacts_under(folder) if _in_original(p, folder)]


def _artifacts_under(folder: Path) -> list[Path]:
    """The files under ``folder`` whose suffix has an extractor, sorted. A folder that cannot
    be read is an error: ``rglob`` left it out without a word, and its files unscanned (a
    scan then said that no weight was found)."""

    def refuse(err: OSError) -> None:
        raise InvalidArgumentError(
            f"Cannot read the folder '{err.filename}' ({err.strerror or err}): the files in it "
            "would go unscanned. Give this user read access to it, then scan again."
        ) from err

    found = []
    for root, _, names in os.walk(folder, onerror=refuse):  # links to folders not followed
        found += [
            path
            for path in (Path(root) / name for name in names)
            if path.suffix.lower() in _EXTRACTORS and path.is_file()
        ]
    return sorted(found)


def _in_original(path: Path, folder: Path) -> bool:
    """Whether ``path`` is a file of an ``original/`` folder below ``folder``, as
    ``save_original=True`` writes them (``<model>/original/<model>_<format>.<suffix>``). Only
    the file's own folder counts: a model may be named ``original`` (its locked files are in
    ``original/onnx/``, which were left out of the scan and, with 2026-12-07's warning, named
    as unlocked copies)."""
    parts = path.relative_to(folder).parts
    return len(parts) >= 2 and parts[-2] == "original"


def artifact_constants(path: Path) -> dict[str, np.ndarray]:
    """Every numeric constant stored in an artifact (``.onnx``, TorchScript ``.pt``, ``.pt2``)
    or in a weights file (``torch.save``'s ``.pt``/``.pth``/``.ckpt``, ``.safetensors``).

    Names are unique and say where each constant came from; binary members of compiled packages
    are returned whole as ``uint8`` arrays.
    """
    path = Path(path)
    extractor = _EXTRACTORS.get(path.suffix.lower())
    if extractor is None:
        raise InvalidArgumentError(
            f"Cannot read constants from '{path.name}': the suffix must be one of "
            f"{', '.join(sorted(_EXTRACTORS))}, but got '{path.suffix}'."
        )
    if not path.is_file():
        raise InvalidArgumentError(f"Artifact '{path}' does not exist. Check the path.")
    try:
        return extractor(path)
    except Exception as err:  # onnx, torch.jit and zipfile each raise their own on bad bytes
        raise InvalidArgumentError(
            f"Cannot read the constants of '{path}' ({first_line(err)}): the file is damaged, "
            f"truncated or not a {path.suffix} artifact. Export it again."
        ) from err


# ---------------------------------------------------------------------------------------------
# ONNX
# ---------------------------------------------------------------------------------------------


def _numeric(a: np.ndarray) -> np.ndarray | None:
    a = np.asarray(a)
    if a.dtype.kind in "fiu" and a.size > 0:
        return a
    return None


def _onnx_graph_constants(graph, prefix: str, out: dict[str, np.ndarray]) -> None:
    from onnx import AttributeProto, numpy_helper

    for init in graph.initializer:
        _put(out, f"{prefix}initializer:{init.name}", numpy_helper.to_array(init))
    for sparse in graph.sparse_initializer:
        _put(out, f"{prefix}sparse:{sparse.values.name}", numpy_helper.to_array(sparse.values))
    for i, node in enumerate(graph.node):
        node_name = node.name or (node.output[0] if node.output else f"node{i}")
        for attr in node.attribute:
            where = f"{prefix}{node.op_type}:{node_name}.{attr.name}"
            if attr.type == AttributeProto.TENSOR:
                _put(out, where, numpy_helper.to_array(attr.t))
            elif attr.type == AttributeProto.TENSORS:
                for j, t in enumerate(attr.tensors):
                    _put(out, f"{where}[{j}]", numpy_helper.to_array(t))
            elif attr.type == AttributeProto.SPARSE_TENSOR:
                _put(out, where, numpy_helper.to_array(attr.sparse_tensor.values))
            elif attr.type == AttributeProto.FLOATS and len(attr.floats) > 1:
                _put(out, where, np.asarray(attr.floats, dtype=np.float32))
            elif attr.type == AttributeProto.GRAPH:
                _onnx_graph_constants(attr.g, f"{where}/", out)
            elif attr.type == AttributeProto.GRAPHS:
                for j, g in enumerate(attr.graphs):
                    _onnx_graph_constants(g, f"{where}[{j}]/", out)


def _put(out: dict[str, np.ndarray], name: str, value: np.ndarray) -> None:
    value = _numeric(value)
    if value is None:
        return
    key, n = name, 1
    while key in out:
        n += 1
        key = f"{name}#{n}"
    out[key] = value


def onnx_model_constants(model) -> dict[str, np.ndarray]:
    """Constants of a loaded ``onnx.ModelProto``: initializers, Constant nodes, tensor attributes,
    in the main graph, its subgraphs and its local functions."""
    out: dict[str, np.ndarray] = {}
    _onnx_graph_constants(model.graph, "", out)
    for fn in model.functions:
        fake = type("G", (), {"initializer": [], "sparse_initializer": [], "node": fn.node})
        _onnx_graph_constants(fake, f"function:{fn.domain}.{fn.name}/", out)
    return out


@_register(".onnx")
def onnx_constants(path: Path) -> dict[str, np.ndarray]:
    """Constants of an ONNX file as stored (external data included)."""
    import onnx

    return onnx_model_constants(onnx.load(str(path), load_external_data=True))


def onnx_optimized_constants(path: Path) -> dict[str, np.ndarray]:
    """Constants of the model as onnxruntime runs it after ``ORT_ENABLE_ALL`` optimisation.

    Constant folding and fusions may combine tensors; this is what sits in memory at run time.
    The optimised model may use onnxruntime's own ops: only its tensors are read.
    """
    import onnx
    import onnxruntime as ort
    from onnx import external_data_helper

    with tempfile.TemporaryDirectory() as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(optimized)
        options.log_severity_level = 3  # the NCHWc "hardware specific" warning is expected
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        model = onnx.load(str(optimized), load_external_data=False)
        # Untouched initializers may still point at the source model's external data file.
        for tensor in external_data_helper._get_all_tensors(model):
            if external_data_helper.uses_external_data(tensor):
                info = external_data_helper.ExternalDataInfo(tensor)
                base = tmp if (Path(tmp) / info.location).is_file() else str(path.parent)
                external_data_helper.load_external_data_for_tensor(tensor, base)
                tensor.data_location = onnx.TensorProto.DEFAULT
    return {f"optimized:{k}": v for k, v in onnx_model_constants(model).items()}


# ---------------------------------------------------------------------------------------------
# TorchScript
# ---------------------------------------------------------------------------------------------


def _tensor_values(value) -> Iterator[np.ndarray]:
    import torch

    if isinstance(value, torch.Tensor):
        t = value.detach().cpu()
        if t.dtype in (torch.float16, torch.bfloat16):
            t = t.float()
        if t.is_quantized:
            t = t.dequantize()
        if not (t.is_complex() or t.dtype == torch.bool):
            yield t.contiguous().numpy()
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _tensor_values(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensor_values(item)


def _walk_blocks(block, where: str, out: dict[str, np.ndarray]) -> None:
    for node in block.nodes():
        if node.kind() == "prim::Constant" and len(list(node.outputs())) == 1:
            output = node.output()
            try:
                value = output.toIValue()
            except Exception:  # non-tensor constants (functions, modules) have no IValue
                value = None
            for arr in _tensor_values(value):
                _put(out, f"{where}:const:{output.debugName()}", arr)
        for sub in node.blocks():
            _walk_blocks(sub, where, out)


@_register(".pt", ".ts", ".torchscript")
def torchscript_constants(path: Path) -> dict[str, np.ndarray]:
    """Parameters, buffers, tensor attributes and graph constants of a TorchScript module
    (a frozen module keeps its weights as ``prim::Constant`` nodes), in every method; a ``.pt``
    that ``torch.save`` wrote (a state dict beside the artifacts) is read as one
    (:func:`saved_tensors`): it was called damaged, the plaintext weights it holds not found."""
    import torch

    if path.suffix.lower() == ".pt" and not _is_torchscript(path):
        return saved_tensors(path)
    module = torch.jit.load(str(path), map_location="cpu")
    out: dict[str, np.ndarray] = {}
    # Named attributes (recursive) cover parameters, buffers and plain tensor attributes.
    attributes = torch._C._jit_debug_module_iterators(module._c)["named_attributes_r"]
    for name, value in attributes:
        for arr in _tensor_values(value):
            _put(out, f"attribute:{name}", arr)
    for mod_name, sub in module.named_modules():
        c = sub._c
        for method_name in c._method_names():
            graph = c._get_method(method_name).graph
            _walk_blocks(graph.block(), f"{mod_name or 'root'}.{method_name}", out)
    return out


# ---------------------------------------------------------------------------------------------
# Weights files: torch.save and safetensors (an original's copy left among the artifacts)
# ---------------------------------------------------------------------------------------------


def _named_tensors(value: object, name: str) -> Iterator[tuple[str, np.ndarray]]:
    """Every tensor in ``value`` (nested dicts, lists and tuples), named by its keys' path."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _named_tensors(item, f"{name}.{key}" if name else str(key))
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from _named_tensors(item, f"{name}[{i}]")
    else:
        for arr in _tensor_values(value):
            yield name, arr


@_register(".pth", ".ckpt")
def saved_tensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a file ``torch.save`` wrote (a state dict, a checkpoint with optimiser
    state), loaded with ``weights_only=True``, so no code runs."""
    import torch

    try:
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception:  # a whole pickled model (torch.save(model)): not loaded, no code runs
        if not zipfile.is_zipfile(path):
            raise
        return _storages(path)
    out: dict[str, np.ndarray] = {}
    for name, arr in _named_tensors(loaded, ""):
        _put(out, f"saved:{name}", arr)
    return out


def _storages(path: Path) -> dict[str, np.ndarray]:
    """The raw tensor storages of a ``torch.save`` archive (its ``data/`` members), whole, as
    ``uint8`` blobs searched like a compiled package's: the weights of a pickled model that
    ``weights_only`` refuses to load (it was called damaged, exit 2, its plaintext not found)."""
    with zipfile.ZipFile(path) as archive:
        return {
            f"storage:{name}": np.frombuffer(archive.read(name), dtype=np.uint8)
            for name in archive.namelist()
            if "/data/" in name and not name.endswith("/")
        }


@_register(".safetensors")
def safetensors_constants(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a ``.safetensors`` file, as float32 (:func:`_safetensors`)."""
    out: dict[str, np.ndarray] = {}
    for name, arr in _safetensors(path).items():
        _put(out, f"safetensors:{name}", arr)
    return out


# ---------------------------------------------------------------------------------------------
# AOTInductor packages
# ---------------------------------------------------------------------------------------------

_TEXT_SUFFIXES = (".cpp", ".h", ".hpp", ".json", ".py", ".txt", ".ll", ".cubin.txt")


@_register(".pt2")
def aoti_package_constants(path: Path) -> dict[str, np.ndarray]:
    """Every binary member of an AOTInductor package, whole, as a ``uint8`` blob.

    AOTInductor embeds the weights as raw bytes in the compiled ``.so`` (or, with
    ``package_constants_in_so=False``, in separate data members), so there is no tensor
    structure to read back: leaks are searched as exact byte strings.
    """
    out: dict[str, np.ndarray] = {}
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            name = info.filename
            if info.is_dir() or name.endswith(_TEXT_SUFFIXES) or info.file_size < 64:
                continue
            out[f"blob:{name}"] = np.frombuffer(archive.read(name), dtype=np.uint8)
    return out


# ---------------------------------------------------------------------------------------------
# The original weights to search for
# ---------------------------------------------------------------------------------------------

_STATE_DICT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive holds ``code/`` and ``constants.pkl``; a saved state dict not."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


def _state_dict(path: Path) -> dict[str, np.ndarray]:
    """Tensors of a ``torch.save``-d state dict, or of its ``state_dict``/``model`` entry (the
    usual checkpoint layouts); loaded with ``weights_only=True``, so no code runs."""
    import torch

    try:
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        raise InvalidArgumentError(
            f"'{path}' is not a state dict torch.load can read with weights_only=True ({err}). "
            "Save the original with torch.save(model.state_dict(), path), or pass an unlocked "
            "export (protect with save_original=True)."
        ) from err
    if isinstance(loaded, dict) and not any(isinstance(v, torch.Tensor) for v in loaded.values()):
        loaded = next(
            (loaded[k] for k in ("state_dict", "model") if isinstance(loaded.get(k), dict)),
            loaded,
        )
    tensors = (
        {k: v.detach().float().numpy() for k, v in loaded.items() if isinstance(v, torch.Tensor)}
        if isinstance(loaded, dict)
        else {}
    )
    if not tensors:
        raise InvalidArgumentError(
            f"'{path}' holds no tensors by name (found {type(loaded).__name__}); save the "
            "original with torch.save(model.state_dict(), path)."
        )
    return tensors


def _safetensors(path: Path) -> dict[str, np.ndarray]:
    """Tensors of a ``.safetensors`` file (the Hugging Face format), any float dtype."""
    from safetensors.torch import load_file

    try:
        loaded = load_file(str(path), device="cpu")
    except Exception as err:  # safetensors raises its own SafetensorError on bad headers
        raise InvalidArgumentError(
            f"'{path}' is not a readable .safetensors file ({err}); save it again."
        ) from err
    return {k: v.float().numpy() for k, v in loaded.items()}


def original_weights(path: Path) -> dict[str, np.ndarray]:
    """The original model's tensors, to search the shipped files for: from a saved state dict
    (``.pt``/``.pth``/``.bin``/``.ckpt``), a ``.safetensors`` file, or an unlocked ONNX or
    TorchScript export (what ``save_original=True`` writes)."""
    path = Path(path)
    if not path.is_file():
        raise InvalidArgumentError(f"The original '{path}' does not exist. Check the path.")
    suffix = path.suffix.lower()
    if suffix == ".onnx" or (suffix in (".ts", ".torchscript")) or _is_torchscript(path):
        return artifact_constants(path)
    if suffix == ".safetensors":
        return _safetensors(path)
    if suffix in _STATE_DICT_SUFFIXES:
        return _state_dict(path)
    raise InvalidArgumentError(
        f"Cannot read original weights from '{path.name}': pass a state dict "
        f"({', '.join(_STATE_DICT_SUFFIXES)}), a .safetensors file, or an unlocked .onnx or "
        "TorchScript export."
    )


# ---------------------------------------------------------------------------------------------
# Leak search
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightLeak:
    """A constant that holds a (rescaled, permuted) copy of rows or columns of a weight."""

    weight: str
    constant: str
    how: str
    """``"rows"``/``"cols"``: which vectors of the weight matched by cosine; ``"exact"``: its
    exact float32 bytes were found in a binary blob."""
    max_cos: float


def _weight_vectors(w: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
    """Rows and columns of a weight of shape ``(d0, d1, *taps)`` as 2-D arrays of vectors."""
    mat = w.reshape(w.shape[0], -1)
    yield "rows", mat
    yield "cols", mat.T
    if w.ndim > 2:  # conv: per-input-channel slices, taps included
        yield "cols", np.swapaxes(w, 0, 1).reshape(w.shape[1], -1)


def _views(c: np.ndarray, lengths: set[int]) -> Iterator[np.ndarray]:
    """Every matrix of vectors a constant holds for a split of its axes (and their transpose)."""
    shape = c.shape
    if c.ndim == 1:
        for n in lengths:
            if c.size % n == 0:
                yield c.reshape(-1, n)
        return
    for p in range(1, c.ndim):
        a = c.reshape(int(np.prod(shape[:p])), -1)
        if a.shape[1] in lengths:
            yield a
        if a.shape[0] in lengths:
            yield a.T


def _unblocked(c: np.ndarray, shapes: set[tuple[int, ...]]) -> Iterator[np.ndarray]:
    """Undo onnxruntime's NCHWc weight reorders (``OIHWBo``, ``OIHWBiBo``, block 8 or 16,
    channels zero-padded to the block) and crop to each original conv shape that fits."""
    if c.ndim != 4:
        return
    o_pad, i_pad, kh, kw = c.shape
    flat = c.reshape(-1)
    candidates = []
    for b in (8, 16):
        if o_pad % b:
            continue
        bo = flat.reshape(o_pad // b, i_pad, kh, kw, b)
        candidates.append(bo.transpose(0, 4, 1, 2, 3).reshape(c.shape))
        if i_pad % b == 0:
            bibo = flat.reshape(o_pad // b, i_pad // b, kh, kw, b, b)
            candidates.append(bibo.transpose(0, 5, 1, 4, 2, 3).reshape(c.shape))
    for cand in candidates:
        for o, i, h, w in shapes:
            if (h, w) == (kh, kw) and o <= o_pad and i <= i_pad and (o, i) != (o_pad, i_pad):
                yield cand[:o, :i]
            elif (o, i, h, w) == c.shape:
                yield cand


def _normalize(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float32)
    norms = np.linalg.norm(a, axis=1, keepdims=True)
    return np.divide(a, norms, out=np.zeros_like(a), where=norms > 1e-20)


@dataclass
class _Group:
    """All original vectors of one length, normalised, with the (weight, how) each belongs to."""

    vectors: np.ndarray
    labels: np.ndarray


def _informative(a: np.ndarray) -> np.ndarray:
    """Rows that are not (nearly) constant: a constant row matches every constant-filled tensor."""
    a = a.astype(np.float64)
    rms = np.sqrt(np.mean(a**2, axis=1))
    return (np.std(a, axis=1) > 1e-6 * np.maximum(rms, 1e-30)) & (rms > 0)


def _half_encodings(vec: np.ndarray) -> list[np.ndarray]:
    """The bytes of ``vec`` as a model in half precision stores it, as ``uint16`` words: IEEE
    float16 and bfloat16, each rounded to nearest even from float32 as torch converts (an
    original given in either dtype is read as float32 exactly, so this gives its bytes back)."""
    f32 = np.ascontiguousarray(vec, dtype="<f4")
    with np.errstate(over="ignore"):
        f16 = f32.astype("<f2").view("<u2")
    bits = f32.view("<u4").astype(np.uint64)
    bf16 = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2")
    return [f16, bf16]


def _prefix_at(raw: np.ndarray) -> int | None:
    """Where ``raw`` (words of one element each) has the 8 bytes that :func:`_exact_leaks`
    looks up: elements all nonzero and not all equal (a run of zeros or of one value is in
    every blob). None where it has none. Vectorised: a Python loop over the elements took
    minutes for the rows of a pruned weight (mostly zeros: the loop ran to their end)."""
    m = 8 // raw.itemsize
    if len(raw) < m:
        return None
    windows = np.lib.stride_tricks.sliding_window_view(raw, m)
    usable = np.all(windows != 0, axis=1) & np.any(windows != windows[:, :1], axis=1)
    at = np.flatnonzero(usable)
    return int(at[0]) if at.size else None


_HASH_BITS = 24
"""Bits of the hash of an 8-byte prefix that :class:`_ExactIndex` marks in its table (2**24
flags, 16 MiB): a position of a blob is looked up only when its hash is marked."""


def _prefix_hash(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """A :data:`_HASH_BITS`-bit hash of 8-byte words given as their ``uint32`` halves."""
    mixed = (lo * np.uint32(0x9E3779B1)) ^ (hi * np.uint32(0x85EBCA77))
    return mixed >> np.uint32(32 - _HASH_BITS)


class _ExactIndex:
    """The original rows and columns that :func:`_exact_leaks` looks for in blobs, stored as
    float32, float16 or bfloat16: by the 8 bytes where each is looked up (:func:`_prefix_at`),
    with a table of those prefixes' hashes. Built once per scan (it was built again for every
    ``uint8`` constant: a quantized ONNX model has hundreds)."""

    def __init__(self, rows: list[tuple[int, np.ndarray]]) -> None:
        self.by_prefix: dict[int, list[tuple[int, int, bytes]]] = {}
        for label, vec in rows:
            f32 = np.ascontiguousarray(vec, dtype="<f4").view("<u4")
            for raw in (f32, *_half_encodings(vec)):
                k = _prefix_at(raw)
                if k is None:
                    continue
                prefix = int(np.frombuffer(raw[k:].tobytes()[:8], dtype="<u8")[0])
                # k in bytes: the prefix of a float16 row is 2k bytes into it
                entry = (label, raw.itemsize * k, raw.tobytes())
                self.by_prefix.setdefault(prefix, []).append(entry)
        self.prefixes = np.fromiter(self.by_prefix, dtype=np.uint64, count=len(self.by_prefix))
        self.table = np.zeros(1 << _HASH_BITS, dtype=bool)
        lo = (self.prefixes & np.uint64(0xFFFFFFFF)).astype(np.uint32)
        hi = (self.prefixes >> np.uint64(32)).astype(np.uint32)
        self.table[_prefix_hash(lo, hi)] = True


_BLOB_CHUNK = 1 << 20
"""Words of a blob looked up at a time (bounded memory: the blob was widened to 8-byte words
whole, 3.9 GB of memory for a 100 MB blob)."""


def _exact_leaks(blob: np.ndarray, index: _ExactIndex) -> dict[int, float]:
    """Labels whose vectors appear byte for byte in ``blob`` (any 1-byte alignment), stored as
    float32, or as float16 or bfloat16 (a model exported in half precision: an AOTInductor
    package of one held its weights so, and was searched for float32 bytes only).

    Every byte offset of the blob starts an 8-byte word, read as two ``uint32`` halves from the
    4-byte-aligned view at that offset: a word whose hash is marked in the index's table is
    looked up, and a prefix found there is compared whole with the row it starts."""
    found: dict[int, float] = {}
    if not index.by_prefix:
        return found
    data = np.ascontiguousarray(blob, dtype=np.uint8).reshape(-1)
    size = len(data)
    for align in range(4):
        count = (size - align) // 4
        if count < 2:
            continue
        words = np.frombuffer(data, dtype="<u4", count=count, offset=align)
        for first in range(0, count - 1, _BLOB_CHUNK):
            last = min(first + _BLOB_CHUNK, count - 1)  # words [first, last) start a prefix
            lo, hi = words[first:last], words[first + 1 : last + 1]
            near = np.flatnonzero(index.table[_prefix_hash(lo, hi)])
            if near.size == 0:
                continue
            keys = lo[near].astype(np.uint64) | (hi[near].astype(np.uint64) << np.uint64(32))
            hit = np.isin(keys, index.prefixes)
            for pos, key in zip(near[hit].tolist(), keys[hit].tolist(), strict=True):
                at = align + 4 * (first + pos)  # the prefix's byte offset in the blob
                for label, k, raw in index.by_prefix[key]:
                    start = at - k
                    if label in found or start < 0 or start + len(raw) > size:
                        continue
                    if data[start : start + len(raw)].tobytes() == raw:
                        found[label] = 1.0
    return found


def find_weight_leaks(
    constants: dict[str, np.ndarray],
    weights: dict[str, np.ndarray],
    threshold: float = 0.999,
    *,
    min_length: int = 8,
    chunk: int = 4096,
) -> list[WeightLeak]:
    """Report every constant that holds rows or columns of an original weight.

    ``weights`` are the original tensors (1-D ones, e.g. biases, are ignored); vectors shorter
    than ``min_length`` are ignored (short vectors match by chance).  Float constants are
    compared by ``|cosine|`` of every row/column against every original row/column after each
    reshape that fits; ``uint8`` constants (binary blobs) are searched for the exact float32,
    float16 and bfloat16 bytes of every original row and column.
    """
    if isinstance(threshold, bool) or not isinstance(threshold, Real) or not 0 < threshold <= 1:
        raise InvalidArgumentError(f"threshold must be in (0, 1], but got {threshold!r}")
    require_positive(min_length, "min_length", INTEGER, "integer")
    require_positive(chunk, "chunk", INTEGER, "integer")
    label_names: list[tuple[str, str]] = []
    by_length: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
    exact_rows: list[tuple[int, np.ndarray]] = []
    for wname, w in weights.items():
        w = np.asarray(w)
        if w.ndim < 2 or w.dtype.kind != "f":
            continue
        for how, mat in _weight_vectors(w.astype(np.float32)):
            if mat.shape[1] < min_length:
                continue
            keep = _informative(mat)
            if not keep.any():
                continue
            label = len(label_names)
            label_names.append((wname, how))
            vecs = mat[keep]
            by_length.setdefault(mat.shape[1], []).append(
                (_normalize(vecs), np.full(len(vecs), label))
            )
            exact_rows += [(label, v) for v in vecs]
    conv_shapes = {np.shape(w) for w in weights.values() if np.ndim(w) == 4}
    groups = {
        n: _Group(np.concatenate([v for v, _ in parts]), np.concatenate([lab for _, lab in parts]))
        for n, parts in by_length.items()
    }
    leaks: list[WeightLeak] = []
    index: _ExactIndex | None = None  # built on the first blob, for all of them
    for cname, c in constants.items():
        c = np.asarray(c)
        if c.dtype == np.uint8:
            index = _ExactIndex(exact_rows) if index is None else index
            for label, score in _exact_leaks(c.reshape(-1), index).items():
                wname, _ = label_names[label]
                leaks.append(WeightLeak(wname, cname, "exact", score))
            continue
        if c.dtype.kind != "f" or c.size < min_length:
            continue
        best = np.zeros(len(label_names))
        c = c.astype(np.float32, copy=False)
        views = [v for u in [c, *_unblocked(c, conv_shapes)] for v in _views(u, set(groups))]
        for view in views:
            group = groups[view.shape[1]]
            for start in range(0, view.shape[0], chunk):
                part = _normalize(view[start : start + chunk])
                sims = np.abs(part @ group.vectors.T).max(axis=0)
                np.maximum.at(best, group.labels, sims)
        for label in np.flatnonzero(best > threshold):
            wname, how = label_names[label]
            leaks.append(WeightLeak(wname, cname, how, float(best[label])))
    return leaks
