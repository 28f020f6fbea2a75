"""Int8 quantization of locked models: ONNX Runtime dynamic and static (QDQ) quantization of the
locked model versus the same quantization of the original, accuracy on reference tasks.

For each reference task the model is trained (seeded, one torch thread), then locked with
``skprotect_pytorch.lock.lock_model`` (every supported layer, lock preset ``--preset``, default
the product's) with ``quantize_compatibility=True`` and with the default settings, each ``--keys``
times (a different key and public mixing each time). The original and the locked models are
exported with the project's ONNX exporter (dynamo, opset 18, batch dynamic), passed through
``onnxruntime.quantization.quant_pre_process`` (ORT's recommended pre-processing: shape
inference, graph optimisation such as BatchNorm folding) and ``untranspose_gemm_inputs``
(``skprotect_pytorch.quantization.preprocess_onnx``), then quantized with ONNX Runtime's own
tools through the library's ``quantize_protected_onnx`` (locked) and ``quantize_original_onnx``
(original), with the same arguments for both:

* ``dynamic``: ``quantize_dynamic(per_channel=True, weight_type=QInt8)``;
* ``static``: ``quantize_static(quant_format=QDQ, per_channel=True, activation_type=QInt8,
  weight_type=QInt8, calibrate_method=MinMax)`` on a seeded ``--calib-percent`` % of the
  training inputs. The locked model is calibrated **with the key it will run with** (here the
  static key): every calibration batch feeds the model input *and* the ``key_vector`` input;
* ``static_fo``: the same with ``extra_options={"OpTypesToExcludeOutputQuantization":
  ["Conv", "Gemm", "MatMul"]}`` (the layers' outputs stay float until the next layer's input).

Both get ``reduce_range=True`` (7-bit weights) where onnxruntime's int8 GEMM can saturate, an
x86 CPU without VNNI (``--reduce-range auto``, the default; ``on``/``off`` force it): there the
u8×s8 kernel adds pairs of products in int16, and on an AMD EPYC without VNNI full-range
weights cost the locked LSTM 8 points (its input projection is a quantized Gemm, the original's
sits in the fused LSTM op, which ORT's static quantizer leaves float and its dynamic one runs as
``DynamicQuantizeLSTM`` without that loss) against 0.0–0.06 with 7-bit weights. The count of
int8 weights covers the fused ops' ``W`` and ``R`` and the matrices inside the locked cell's
``Scan`` (which ORT leaves float in both modes).

``nodes_to_exclude`` (the library's rules; locked models, they find nothing in the originals):

* the key and every node that reads it or a tensor decoded from it (``key_nodes``: the
  decoder's Reshape/Pad/Slice/Round/Mod/Cast/Clip/Split/Mul and the Gather/Mul nodes that apply
  indices and scales to activations). ORT's default static op list includes Pad, Slice, Mul and
  Gather, so without this it puts QuantizeLinear nodes on the key itself (accuracy falls to
  chance) or on the decoded scale vectors; the library checks the result and raises
  ``VerificationError`` if a key node was quantized;
* the lock's public (block-)orthogonal mixing ops (``is_mixing_node``), unless the variant
  says "int8": quantizing them adds rounding points that the original does not have;
* in dynamic mode, MatMuls with a rank-3 constant weight (the uniform block un-mix): ORT's
  ``DynamicQuantizeMatMul`` rejects their per-channel zero points at run time.

Each accuracy is measured on the task's test set with onnxruntime (CPU EP), for the locked
models with the static key and checked equal with a runtime session key. The excess drop is
the locked model's accuracy drop (from the fp32 original) minus the original's under the same
quantization; issue 5's target is ≤ 0.5 points with ``quantize_compatibility=True``. The log
also counts how many trained weights each quantized model stores as int8 (locked = original).

With ``--latency`` the recommended variant's first key is also timed against the original
(onnxruntime, one thread, batch 1 and 32, all models interleaved): what int8 gains on each side,
and the locked / original ratio in fp32 and in every mode.

Usage::

    python bench/quantization.py                 # tabular MLP, digits CNN, suite ResNet CNN
    python bench/quantization.py --quick --keys 1
    python bench/quantization.py --tasks tabular,transformer
    python bench/quantization.py --tasks tabular,digits,cnn,transformer,lstm,gru --keys 1 --latency
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import comma_names, machine_line, measure_interleaved
from skprotect_pytorch.quantization import (
    KEY_NAME,
    graph_constants,
    int8_saturates,
    is_mixing_node,
    quantize_original_onnx,
    quantize_protected_onnx,
)
from skprotect_pytorch.quantization import preprocess_onnx as preprocess

INPUT_NAME = "x"
EXAMPLE_BATCH = 2  # export example: > 1 so that the batch dimension stays dynamic
CALIB_BATCH = 64
QUANT_MODES = ("dynamic", "static", "static_fo")
MODE_LABELS = {
    "dynamic": "dynamic",
    "static": "static QDQ",
    "static_fo": "static QDQ, layer outputs float",
}
TARGET_POINTS = 0.5
LATENCY_BATCHES = (1, 32)


# ---------------------------------------------------------------------------------------------
# reference tasks


@dataclass
class TrainedTask:
    """A trained reference model with its data, as numpy arrays for onnxruntime."""

    name: str
    description: str
    model: object  # torch.nn.Module in eval mode
    x_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Train on one torch thread: small models train ~10x faster than on 2 busy cores."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def tabular_task(quick: bool, seed: int = 0) -> TrainedTask:
    """``audit.data.make_tabular_task`` with ``audit.models.TabularMLP`` (40-128-128-10)."""
    from skprotect_pytorch.audit.data import make_tabular_task
    from skprotect_pytorch.audit.models import TabularMLP, train_model

    if quick:
        task = make_tabular_task(n_train=4_000, n_test=2_000, seed=seed)
        epochs = 10
    else:
        task = make_tabular_task(seed=seed)
        epochs = 30
    model = TabularMLP(task.n_features, task.n_classes)
    with one_thread():
        train_model(model, task.x_train, task.y_train, epochs=epochs, seed=seed)
    return TrainedTask(
        "tabular_mlp",
        f"make_tabular_task ({len(task.y_train)} train / {len(task.y_test)} test, "
        f"40 features, 10 classes), TabularMLP 40-128-128-10, {epochs} epochs",
        model,
        task.x_train.numpy(),
        task.x_test.numpy(),
        task.y_test.numpy(),
    )


def digits_task(quick: bool, seed: int = 0) -> TrainedTask:
    """The quickstart's DigitsCNN (2 conv + BatchNorm, 2 linear) on scikit-learn's 8x8 digits."""
    from skprotect_pytorch.quickstart import load_digits_split, train

    data = load_digits_split(seed)
    epochs = 10 if quick else 20
    with one_thread():
        model = train(data, epochs=epochs, seed=seed)
    return TrainedTask(
        "digits_cnn",
        f"sklearn digits 8x8 ({len(data.y_train)} train / {len(data.y_test)} test), quickstart "
        f"DigitsCNN (conv16-BN-conv32-BN-fc64-fc10), {epochs} epochs",
        model,
        data.x_train.numpy(),
        data.x_test,
        data.y_test,
    )


def suite_task(name: str) -> Callable[[bool, int], TrainedTask]:
    """A reference model of the audit suite (``audit.suite.SUITE``), trained as the victim."""

    def make(quick: bool, seed: int = 0) -> TrainedTask:
        from skprotect_pytorch.audit.suite import reference

        spec = reference(name)
        task = spec.task(seed)
        epochs = spec.quick_epochs if quick else spec.victim_epochs
        with one_thread():
            model = spec.train_victim(task, epochs, seed)
        return TrainedTask(
            f"suite_{name}",
            f"audit suite '{name}': {spec.description}, {epochs} epochs",
            model,
            task.x_train.numpy(),
            task.x_test.numpy(),
            task.y_test.numpy(),
        )

    return make


TASKS: dict[str, Callable[[bool, int], TrainedTask]] = {
    "tabular": tabular_task,
    "digits": digits_task,
    "cnn": suite_task("cnn"),
    "transformer": suite_task("transformer"),
    "lstm": suite_task("lstm"),
    "gru": suite_task("gru"),
}
DEFAULT_TASKS = ("tabular", "digits", "cnn")


# ---------------------------------------------------------------------------------------------
# locking, exporting, quantizing


def export_onnx(module: object, example: Sequence[object], path: Path, *, with_key: bool) -> Path:
    """Export with the project's ONNX exporter, batch dynamic, input ``x`` (+ ``key_vector``)."""
    import torch

    from skprotect_pytorch.export import build_export_options, get_exporter
    from skprotect_pytorch.formats import ExportFormat

    opts = build_export_options(
        [example[0]],
        {"input_names": [INPUT_NAME], "output_names": ["y"]},
        ({0: torch.export.Dim("batch")},),
    )
    exporter = get_exporter(ExportFormat.ONNX)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        exporter.export(module, tuple(example), path, opts, with_key=with_key)
    return path


def lock(
    model: object, *, quantize_compatibility: bool, seed: int, name: str, preset: str | None = None
) -> object:
    """``lock_model`` on every supported layer with a lock preset (default: the product's)."""
    from skprotect_pytorch.lock import LockSettings, lock_model

    return lock_model(
        model,
        layer_filter=lambda n, m: True,
        secret_rng=np.random.default_rng(seed),
        settings=LockSettings.preset(
            preset or default_preset(), quantize_compatibility=quantize_compatibility
        ),
        public_seed=f"bench/quantization/{name}",
    )


def default_preset() -> str:
    """The lock preset ``protect_new_model`` uses by default."""
    from skprotect_pytorch.lock.context import DEFAULT_PRESET

    return DEFAULT_PRESET


RECURRENT_OPS = ("LSTM", "GRU", "RNN")
"""ONNX's fused recurrent ops; their inputs 1 and 2 are the input and recurrent weights."""


def _graphs(graph: object, outer: dict[str, np.ndarray] | None = None) -> Iterator[tuple]:
    """``graph`` and the bodies of its loops (the locked recurrent cell's ``Scan``), each with
    the constants it can read: its own and its outer scopes'."""
    import onnx

    constants = {**(outer or {}), **graph_constants(graph)}
    yield graph, constants
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attribute.g, constants)


def trained_weights(model_path: Path) -> list[str]:
    """The trained weights a quantizer could store as int8: the constant weights of the
    Conv/MatMul/Gemm nodes that are not the lock's mixing ops, in the graph and in its loop
    bodies (the locked recurrent matrices sit in a ``Scan``), and the ``W`` and ``R`` inputs of
    fused LSTM/GRU/RNN ops (an original's recurrent layer)."""
    import onnx

    names = set()
    for graph, constants in _graphs(onnx.load(str(model_path)).graph):
        for node in graph.node:
            if node.op_type in ("Conv", "MatMul", "Gemm") and not is_mixing_node(node, constants):
                names.update(i for i in node.input[:2] if i in constants and constants[i].ndim >= 2)
            elif node.op_type in RECURRENT_OPS:
                names.update(i for i in node.input[1:3] if i in constants)
    return sorted(names)


def quantized_count(quantized_path: Path, weights: Sequence[str]) -> int:
    """How many of ``weights`` are stored as int8 in the quantized model (any subgraph)."""
    import onnx

    stored = {
        t.name
        for graph, _ in _graphs(onnx.load(str(quantized_path)).graph)
        for t in graph.initializer
    }
    return sum(
        any(s.startswith(w + "_") and s.endswith("_quantized") for s in stored) for w in weights
    )


def quantize(
    src: Path,
    dst: Path,
    mode: str,
    calib: np.ndarray,
    key: np.ndarray | None,
    *,
    quantize_mixing: bool = False,
    reduce_range: bool = False,
) -> tuple[Path, list[str]]:
    """Quantize the pre-processed ``src`` in one of :data:`QUANT_MODES` with the library's
    ``quantize_protected_onnx`` (locked, calibrated with ``key``) or ``quantize_original_onnx``
    (``key`` None), same settings for both; returns ``dst`` and the nodes left float."""
    static = mode != "dynamic"
    options = {
        "mode": "static" if static else "dynamic",
        "calibration_inputs": calib if static else None,
        "calibration_batch": CALIB_BATCH,
        "per_channel": True,
        "reduce_range": reduce_range,
        "float_layer_outputs": mode == "static_fo",
        "preprocess": False,
    }
    if key is None:
        report = quantize_original_onnx(src, dst, **options)
    else:
        with warnings.catch_warnings():  # the default lock is measured on purpose
            warnings.filterwarnings(
                "ignore", "(?s).*without quantize_compatibility", RuntimeWarning
            )
            report = quantize_protected_onnx(
                src, dst, key=key, quantize_mixing=quantize_mixing, **options
            )
    return dst, list(report.excluded_nodes)


def ort_latency(
    models: dict[str, tuple[Path, np.ndarray | None]],
    x: np.ndarray,
    *,
    blocks: int = 8,
    block_s: float = 0.2,
) -> dict[int, dict[str, float]]:
    """Median seconds per call of every model (path and key, ``None`` for an original) at each
    of :data:`LATENCY_BATCHES`, onnxruntime with one thread (the overhead bench's sessions), all
    models timed interleaved."""
    from overhead import ort_runner

    runners = {name: (ort_runner(path, 1), key) for name, (path, key) in models.items()}
    out = {}
    for batch in LATENCY_BATCHES:
        inputs = [np.ascontiguousarray(x[:batch])]
        calls = {
            name: bind(inputs if key is None else [*inputs, key])
            for name, (bind, key) in runners.items()
        }
        out[batch], _ = measure_interleaved(calls, blocks=blocks, block_s=block_s)
    return out


def ort_accuracy(
    path: Path, x: np.ndarray, y: np.ndarray, key: np.ndarray | None, batch: int = 512
) -> float:
    """Top-1 accuracy of an ONNX model on ``(x, y)`` with onnxruntime CPU."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    session = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    correct = 0
    for i in range(0, len(y), batch):
        feed = {INPUT_NAME: x[i : i + batch]}
        if key is not None:
            feed[KEY_NAME] = key
        logits = session.run(None, feed)[0]
        correct += int((logits.argmax(-1) == y[i : i + batch]).sum())
    return correct / len(y)


# ---------------------------------------------------------------------------------------------
# the measurement


@dataclass(frozen=True)
class Variant:
    """One way of locking and quantizing: the lock setting and whether its mixing ops go int8."""

    quantize_compatibility: bool
    quantize_mixing: bool

    @property
    def setting(self) -> str:
        return "quantize_compatibility=True" if self.quantize_compatibility else "default"

    @property
    def mixing(self) -> str:
        return "int8" if self.quantize_mixing else "fp32 (excluded)"


RECOMMENDED = Variant(quantize_compatibility=True, quantize_mixing=False)
VARIANTS = (
    RECOMMENDED,
    Variant(quantize_compatibility=True, quantize_mixing=True),
    Variant(quantize_compatibility=False, quantize_mixing=False),
    Variant(quantize_compatibility=False, quantize_mixing=True),
)


@dataclass
class Row:
    """Accuracies (fractions) of one task and variant, the locked ones over several keys."""

    task: str
    variant: Variant
    fp32_original: float
    original: dict[str, float]  # mode -> accuracy
    trained: int  # trained weight tensors (Conv/MatMul/Gemm) of the original
    int8_original: dict[str, int]  # mode -> how many of them are stored int8
    fp32_locked: list[float] = field(default_factory=list)  # one per key
    locked: dict[str, list[float]] = field(default_factory=dict)  # mode -> one per key
    int8_locked: dict[str, list[int]] = field(default_factory=dict)
    excluded: dict[str, int] = field(default_factory=dict)  # mode -> nodes excluded (last key)
    notes: list[str] = field(default_factory=list)
    latency: dict[int, dict[str, float]] = field(default_factory=dict)
    """batch -> ``"<fp32 or mode> original|locked"`` -> median seconds per call (first key)."""

    def drops(self, mode: str) -> list[float]:
        """Locked accuracy drop in points from the fp32 original, per key."""
        return [100.0 * (self.fp32_original - a) for a in self.locked[mode]]

    def original_drop(self, mode: str) -> float:
        return 100.0 * (self.fp32_original - self.original[mode])

    def excesses(self, mode: str) -> list[float]:
        """Locked drop minus original drop, in points, per key (the issue's target: ≤ 0.5)."""
        return [d - self.original_drop(mode) for d in self.drops(mode)]

    def fp32_max_gap(self) -> float:
        """Largest fp32 accuracy difference locked vs original, in points."""
        return max(abs(100.0 * (a - self.fp32_original)) for a in self.fp32_locked)


def calibration_split(x_train: np.ndarray, percent: float, seed: int) -> np.ndarray:
    """A seeded random ``percent`` % of the training inputs (at least two batches)."""
    n = len(x_train)
    size = min(n, max(2 * CALIB_BATCH, round(n * percent / 100.0)))
    idx = np.random.default_rng(seed).choice(n, size=size, replace=False)
    return np.ascontiguousarray(x_train[np.sort(idx)])


@dataclass
class LockedExport:
    """One locked, exported and pre-processed model with its static key."""

    path: Path
    key: np.ndarray
    session_key: np.ndarray  # another valid key (what the runtime feeds), same outputs
    fp32_accuracy: float
    weights: list[str]


def run_task(
    task: TrainedTask,
    outdir: Path,
    *,
    variants: Sequence[Variant] = VARIANTS,
    modes: Sequence[str] = QUANT_MODES,
    keys: int = 3,
    calib_percent: float = 5.0,
    seed: int = 0,
    preset: str | None = None,
    reduce_range: bool = False,
    latency: bool = False,
    latency_block_s: float = 0.2,
    log: Callable[[str], None] = print,
) -> list[Row]:
    """Export, quantize and evaluate the original and each locked variant of ``task``.

    Each variant is locked ``keys`` times (secret seeds ``seed .. seed+keys-1``, a public seed
    per key): the accuracy loss of a locked model depends a little on its key and mixing.
    With ``latency``, the recommended variant's first key is also timed against the original,
    in fp32 and in every mode (:func:`ort_latency`, blocks of ``latency_block_s`` seconds).
    """
    import torch

    from skruntime.keyfile import KeyMaterial, session_key

    x_test, y_test = task.x_test, task.y_test
    calib = calibration_split(task.x_train, calib_percent, seed)
    example = torch.from_numpy(task.x_train[:EXAMPLE_BATCH])
    t0 = time.perf_counter()
    orig_raw = outdir / f"{task.name}_original.onnx"
    export_onnx(task.model, [example], orig_raw, with_key=False)
    orig_pre = preprocess(orig_raw, outdir / f"{task.name}_original.pre.onnx")
    fp32_original = ort_accuracy(orig_pre, x_test, y_test, None)
    weights = trained_weights(orig_pre)
    original: dict[str, float] = {}
    int8_original: dict[str, int] = {}
    timed_original: dict[str, tuple[Path, None]] = {"fp32 original": (orig_pre, None)}
    for mode in modes:
        q, _ = quantize(
            orig_pre,
            outdir / f"{task.name}_original.{mode}.onnx",
            mode,
            calib,
            None,
            reduce_range=reduce_range,
        )
        original[mode] = ort_accuracy(q, x_test, y_test, None)
        int8_original[mode] = quantized_count(q, weights)
        timed_original[f"{mode} original"] = (q, None)
    accs = ", ".join(f"{m} {a:.4f}" for m, a in original.items())
    int8 = ", ".join(f"{m} {n}/{len(weights)}" for m, n in int8_original.items())
    log(
        f"  original: fp32 {fp32_original:.4f}, {accs}; int8 weights {int8} "
        f"({time.perf_counter() - t0:.1f} s)"
    )
    exports: dict[tuple[bool, int], LockedExport] = {}
    rows = []
    for variant in variants:
        t0 = time.perf_counter()
        qc = variant.quantize_compatibility
        row = Row(task.name, variant, fp32_original, original, len(weights), int8_original)
        timed: dict[str, tuple[Path, np.ndarray | None]] = dict(timed_original)
        for k in range(seed, seed + keys):
            tag = f"{'qc' if qc else 'default'}_k{k}"
            if (qc, k) not in exports:
                locked = lock(
                    task.model,
                    quantize_compatibility=qc,
                    seed=k,
                    name=f"{task.name}/{k}",
                    preset=preset,
                )
                key = locked.layout.static_key()
                raw = outdir / f"{task.name}_locked_{tag}.onnx"
                export_onnx(locked.keyed, [example, torch.from_numpy(key)], raw, with_key=True)
                pre = preprocess(raw, outdir / f"{task.name}_locked_{tag}.pre.onnx")
                acc = ort_accuracy(pre, x_test, y_test, key)
                material = KeyMaterial(key, locked.layout.spec())
                other = session_key(material, np.random.default_rng(k))
                exports[qc, k] = LockedExport(pre, key, other, acc, trained_weights(pre))
            exp = exports[qc, k]
            row.fp32_locked.append(exp.fp32_accuracy)
            if k == seed:
                timed["fp32 locked"] = (exp.path, exp.key)
            if len(exp.weights) != len(weights):
                row.notes.append(
                    f"key {k}: {len(exp.weights)} trained weights found in the locked graph, "
                    f"{len(weights)} in the original"
                )
            for mode in modes:
                mix = "mixq" if variant.quantize_mixing else "mixf"
                q, excluded = quantize(
                    exp.path,
                    outdir / f"{task.name}_locked_{tag}_{mix}.{mode}.onnx",
                    mode,
                    calib,
                    exp.key,
                    quantize_mixing=variant.quantize_mixing,
                    reduce_range=reduce_range,
                )
                row.excluded[mode] = len(excluded)
                if k == seed:
                    timed[f"{mode} locked"] = (q, exp.key)
                acc = ort_accuracy(q, x_test, y_test, exp.key)
                row.locked.setdefault(mode, []).append(acc)
                if ort_accuracy(q, x_test, y_test, exp.session_key) != acc:
                    row.notes.append(f"key {k}, {mode}: a session key changes the accuracy")
                n_int8 = quantized_count(q, exp.weights)
                row.int8_locked.setdefault(mode, []).append(n_int8)
                if n_int8 != int8_original[mode]:
                    row.notes.append(
                        f"key {k}, {mode}: {n_int8} of {len(exp.weights)} locked weights int8, "
                        f"{int8_original[mode]} of {len(weights)} original"
                    )
        accs = ", ".join(
            f"{m} " + "/".join(f"{a:.4f}" for a in accs) for m, accs in row.locked.items()
        )
        fp32 = "/".join(f"{a:.4f}" for a in row.fp32_locked)
        int8 = ", ".join(
            f"{m} " + "/".join(str(n) for n in ns) for m, ns in row.int8_locked.items()
        )
        excl = ", ".join(f"{m} {n}" for m, n in row.excluded.items())
        log(
            f"  locked ({variant.setting}, mixing {variant.mixing}; {keys} keys): fp32 {fp32}, "
            f"{accs}; int8 weights {int8}; nodes excluded {excl} "
            f"({time.perf_counter() - t0:.1f} s)"
        )
        if latency and variant == RECOMMENDED:
            row.latency = ort_latency(timed, x_test, block_s=latency_block_s)
            for batch, medians in row.latency.items():
                log(
                    f"    latency b{batch} (ms, 1 thread): "
                    + ", ".join(f"{name} {1e3 * t:.3f}" for name, t in medians.items())
                )
        rows.append(row)
    return rows


def run_bench(
    task_names: Sequence[str],
    *,
    quick: bool,
    variants: Sequence[Variant] = VARIANTS,
    modes: Sequence[str] = QUANT_MODES,
    keys: int = 3,
    calib_percent: float = 5.0,
    seed: int = 0,
    preset: str | None = None,
    reduce_range: bool = False,
    latency: bool = False,
    log: Callable[[str], None] = print,
) -> tuple[list[Row], dict[str, TrainedTask]]:
    """Train every task, then measure it; the rows and the trained tasks."""
    rows: list[Row] = []
    tasks: dict[str, TrainedTask] = {}
    with tempfile.TemporaryDirectory(prefix="skprotect_quant_") as tmp:
        for name in task_names:
            t0 = time.perf_counter()
            task = TASKS[name](quick, seed)
            tasks[name] = task
            log(f"{task.name}: {task.description} (trained in {time.perf_counter() - t0:.1f} s)")
            rows += run_task(
                task,
                Path(tmp),
                variants=variants,
                modes=modes,
                keys=keys,
                calib_percent=calib_percent,
                seed=seed,
                preset=preset,
                reduce_range=reduce_range,
                latency=latency,
                log=log,
            )
    return rows, tasks


def markdown_table(
    rows: Sequence[Row], tasks: dict[str, TrainedTask] | None = None, calib_percent: float = 5.0
) -> str:
    """One line per task, variant and mode: accuracies (%), drops and the excess drop."""
    header = [
        "task",
        "lock setting",
        "lock's mixing ops",
        "quantization",
        "fp32 original → locked",
        "int8 original",
        "int8 locked (mean)",
        "excess drop mean / worst",
    ]
    lines = ["| " + " | ".join(header) + " |", "|---|---|---|---|" + "---:|" * (len(header) - 4)]
    for r in rows:
        fp32 = float(np.mean(r.fp32_locked))
        for mode in r.locked:
            acc = float(np.mean(r.locked[mode]))
            ex = r.excesses(mode)
            cells = [
                r.task,
                r.variant.setting,
                r.variant.mixing,
                MODE_LABELS[mode],
                f"{100 * r.fp32_original:.2f} → {100 * fp32:.2f}",
                f"{100 * r.original[mode]:.2f} ({-r.original_drop(mode):+.2f})",
                f"{100 * acc:.2f} ({100 * (acc - r.fp32_original):+.2f})",
                f"**{float(np.mean(ex)):+.2f}** / {max(ex):+.2f}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    n_keys = len(rows[0].fp32_locked) if rows else 0
    notes = [
        f"Accuracy in %, change from the fp32 original in points in parentheses; locked values "
        f"are the mean over {n_keys} key(s). Excess drop = locked drop − original drop, in "
        "points, mean and worst over the keys (issue 5 target: ≤ 0.5 with "
        "quantize_compatibility=True).",
    ]
    notes += [f"- {r.task} / {r.variant.setting}: {n}" for r in rows for n in r.notes]
    for t in (tasks or {}).values():
        n = len(t.y_test)
        calib = len(calibration_split(t.x_train, calib_percent, 0))
        notes.append(
            f"- {t.name}: {n} test samples (1 sample = {100 / n:.3f} points), "
            f"{calib} calibration inputs"
        )
    return "\n".join([*lines, "", *notes])


def latency_table(rows: Sequence[Row]) -> str:
    """Per timed row and batch: original → locked median latency (ms) and their ratio, in fp32
    and in every mode."""
    timed = [r for r in rows if r.latency]
    if not timed:
        return ""
    first = timed[0].latency[LATENCY_BATCHES[0]]
    kinds = [n.removesuffix(" original") for n in first if n.endswith(" original")]
    header = ["task", "lock setting", "batch"] + [
        f"{MODE_LABELS.get(kind, kind)}: original → locked (ms), ratio" for kind in kinds
    ]
    lines = ["| " + " | ".join(header) + " |", "|---|---|---:|" + "---|" * len(kinds)]
    for r in timed:
        for batch, t in r.latency.items():
            cells = [
                f"{1e3 * t[f'{k} original']:.3f} → {1e3 * t[f'{k} locked']:.3f}, "
                f"**{t[f'{k} locked'] / t[f'{k} original']:.2f}**"
                for k in kinds
            ]
            lines.append(
                f"| {r.task} | {r.variant.setting} | {batch} | " + " | ".join(cells) + " |"
            )
    return "\n".join(lines)


def worst_excess(rows: Sequence[Row], mode: str, variant: Variant = RECOMMENDED) -> float:
    """The largest excess drop (points) of ``mode`` over the rows of ``variant`` and the keys."""
    values = [
        e for r in rows if r.variant == variant and mode in r.locked for e in r.excesses(mode)
    ]
    return max(values, default=0.0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller tasks, fewer epochs")
    parser.add_argument(
        "--tasks",
        default=",".join(DEFAULT_TASKS),
        help=f"comma-separated, from {', '.join(TASKS)}",
    )
    parser.add_argument(
        "--calib-percent", type=float, default=5.0, help="%% of training inputs for calibration"
    )
    parser.add_argument("--keys", type=int, default=3, help="locks (keys) per variant")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", help="lock preset (default: the product's default)")
    parser.add_argument(
        "--reduce-range",
        choices=("auto", "on", "off"),
        default="auto",
        help="7-bit weights (onnxruntime's reduce_range); auto: on where int8 GEMMs can "
        "saturate (x86 without VNNI), on both the original and the locked models",
    )
    parser.add_argument(
        "--latency",
        action="store_true",
        help="also time the recommended variant's first key against the original "
        "(onnxruntime, one thread, batch 1 and 32, interleaved), in fp32 and in every mode",
    )
    args = parser.parse_args(argv)
    names = comma_names(parser, args.tasks, "--tasks", "task", TASKS)
    if args.keys < 1:
        parser.error("--keys must be >= 1")
    if args.seed < 0:
        parser.error(f"--seed must be 0 or more, got {args.seed}")
    from skprotect_pytorch.lock import LockSettings

    try:  # before the tasks train, not at the first lock
        LockSettings.preset(args.preset or default_preset())
    except ValueError as err:
        parser.error(f"--preset: {err}")
    if not 0 < args.calib_percent <= 100:
        parser.error(f"--calib-percent must be in (0, 100], got {args.calib_percent:g}")
    print(machine_line())
    print("command:", " ".join(["python", *sys.argv]))
    print(f"lock preset: {args.preset or default_preset()}")
    reduce_range = int8_saturates() if args.reduce_range == "auto" else args.reduce_range == "on"
    print(f"reduce_range: {reduce_range} (--reduce-range {args.reduce_range})")
    rows, tasks = run_bench(
        names,
        quick=args.quick,
        keys=args.keys,
        calib_percent=args.calib_percent,
        seed=args.seed,
        preset=args.preset,
        reduce_range=reduce_range,
        latency=args.latency,
    )
    print()
    print(markdown_table(rows, tasks, args.calib_percent))
    if args.latency:
        print("\nLatency, onnxruntime, 1 thread, median per call (first key):\n")
        print(latency_table(rows))
    print(f"\nworst excess drop, {RECOMMENDED.setting}, mixing {RECOMMENDED.mixing}:")
    for mode in QUANT_MODES:
        print(f"  {MODE_LABELS[mode]}: {worst_excess(rows, mode):+.2f} points")
    print(f"(target ≤ {TARGET_POINTS})")


if __name__ == "__main__":
    main()
