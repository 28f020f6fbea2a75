"""Inference overhead of the lock: locked vs original latency, side by side, as ratios.

For each reference model of ``bench/models.py`` (random weights) this locks a copy with the
default lock (``skprotect_pytorch.lock.lock_model``, every supported layer) and exports both the
original and the locked model with the project's exporters (``skprotect_pytorch.export``), batch
dynamic, into a temporary folder. Then, per runtime configuration, it times the original and the
locked artifact in the same process:

* ONNX Runtime (CPU EP, default graph optimisations), 1 and 2 intra-op threads, batch 1 and 32;
* TorchScript CPU (``torch.jit`` trace+freeze), ``torch.set_num_threads(1)``, batch 1 and 32;
* AOTInductor CPU (``--aoti``; each compile takes 10-60 s), 1 thread, batch 1 and 32;
* on a CUDA machine, ``--backends TorchScript-GPU,AOTI-GPU``: the GPU formats in full float32
  (the runtime's settings), inputs already on the GPU, each call ending with the copy of the
  outputs to the host.

Sequence models (Transformer, LSTM, GRU) use sequences of 32 steps. Each pair is warmed up, then
timed in interleaved blocks (original, locked, locked, original, ...) so that drift and other
load on the machine hit both sides alike; the reported ratio is median(locked) / median(original)
over all calls. Before timing, the locked artifact fed the static key is checked against the
original (batch 1).

Usage::

    python bench/overhead.py --quick            # a few minutes, no AOTInductor
    python bench/overhead.py                    # full run
    python bench/overhead.py --aoti --heavy     # + AOTInductor, + ResNet-18 224 px at batch 32
    python bench/overhead.py --models mlp,gru   # a subset

No result is asserted: the numbers depend on the machine, which the output names.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import (
    comma_names,
    machine_line,
    measure_interleaved,
    positive_float,
    positive_int,
)
from models import BENCH_MODELS, BenchModel

EXAMPLE_BATCH = 2  # export example: > 1 so that the batch dimension stays dynamic
BATCHES = (1, 32)


# ---------------------------------------------------------------------------------------------
# machine and timing helpers


def command_line() -> str:
    return " ".join(["python", *sys.argv])


@dataclass
class PairTiming:
    original: float  # median seconds per call
    locked: float
    calls: int  # per side

    @property
    def ratio(self) -> float:
        return self.locked / self.original


def measure_pair(
    original: Callable[[], object],
    locked: Callable[[], object],
    *,
    blocks: int,
    block_s: float,
    max_calls: int = 2000,
) -> PairTiming:
    """Median latency of both sides, interleaved (:func:`machine.measure_interleaved`)."""
    medians, calls = measure_interleaved(
        {"original": original, "locked": locked},
        blocks=blocks,
        block_s=block_s,
        max_calls=max_calls,
    )
    return PairTiming(medians["original"], medians["locked"], calls)


# ---------------------------------------------------------------------------------------------
# protecting and exporting


@dataclass
class ExportedPair:
    """Original and locked artifacts of one model in one format, with the static key."""

    model: BenchModel
    fmt_name: str
    original: Path
    locked: Path
    key: np.ndarray
    original_seconds: float
    locked_seconds: float
    locked_layers: int
    key_length: int


def export_options(example: object) -> object:
    import torch

    from skprotect_pytorch.export import build_export_options

    return build_export_options(
        [example],
        {"input_names": ["x"], "output_names": ["y"]},
        # Bounded: torch.export on CUDA guards convolutions with batch <= 65535 and refuses an
        # unbounded Dim (docs/api.md, "GPU formats"); the bound changes nothing on the CPU.
        ({0: torch.export.Dim("batch", max=65535)},),
    )


def lock_settings(spec: str | None) -> object:
    """The lock of a ``--presets`` entry: a preset name with optional ``+field=value``
    overrides of ``LockSettings``, e.g. ``strong+unfold_taps_max=0``; ``None``: the default."""
    from skprotect_pytorch.lock import LockSettings
    from skprotect_pytorch.lock.context import DEFAULT_PRESET

    name, *pairs = (spec or DEFAULT_PRESET).split("+")
    known = {f.name for f in fields(LockSettings)}
    overrides: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in known:
            raise ValueError(
                f"{pair!r} in {spec!r}: write field=value with a LockSettings field "
                f"({', '.join(sorted(known))})"
            )
        try:
            overrides[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[key] = value  # a bare string, e.g. mix_sides=smaller
    return LockSettings.preset(name, **overrides)


def lock(model: object, seed: int = 0, name: str = "bench", preset: str | None = None) -> object:
    from skprotect_pytorch.lock import lock_model

    return lock_model(
        model,
        layer_filter=lambda n, m: True,
        secret_rng=np.random.default_rng(seed),
        public_seed=f"bench/{name}",
        settings=lock_settings(preset),
    )


def export_pair(
    bm: BenchModel, fmt_name: str, outdir: Path, seed: int = 0, preset: str | None = None
) -> ExportedPair:
    """Lock ``bm`` with ``preset`` (default: the default lock) and export both models."""
    import torch

    from skprotect_pytorch.export import get_exporter
    from skprotect_pytorch.formats import ExportFormat

    fmt = ExportFormat[fmt_name]
    exporter = get_exporter(fmt)
    model = bm.make(seed)
    x = bm.example(EXAMPLE_BATCH, seed)
    opts = export_options(x)
    locked = lock(model, seed, bm.name, preset)
    key = locked.layout.static_key()
    orig_path = outdir / f"{bm.name}_original{exporter.extension}"
    lock_path = outdir / f"{bm.name}_locked{exporter.extension}"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        t0 = time.perf_counter()
        exporter.export(model, (x,), orig_path, opts, with_key=False)
        t1 = time.perf_counter()
        exporter.export(locked.keyed, (x, torch.from_numpy(key)), lock_path, opts, with_key=True)
        t2 = time.perf_counter()
    return ExportedPair(
        bm,
        fmt_name,
        orig_path,
        lock_path,
        key,
        t1 - t0,
        t2 - t1,
        len(locked.locked_layers),
        locked.layout.length,
    )


# ---------------------------------------------------------------------------------------------
# runners with explicit thread counts (the exporters' own loaders use the runtime defaults)

Runner = Callable[[Sequence[np.ndarray]], Callable[[], list[np.ndarray]]]


def ort_runner(path: Path, threads: int) -> Runner:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def bind(inputs: Sequence[np.ndarray]) -> Callable[[], list[np.ndarray]]:
        feed = dict(zip(names, inputs, strict=True))
        return lambda: session.run(None, feed)

    return bind


def torch_runner(call: Callable[..., object], device: str = "cpu") -> Runner:
    """Inputs live on ``device``; each call ends with the copy of the outputs to the host."""
    import torch

    def bind(inputs: Sequence[np.ndarray]) -> Callable[[], list[np.ndarray]]:
        tensors = [torch.from_numpy(np.ascontiguousarray(x)).to(device) for x in inputs]

        def run() -> list[np.ndarray]:
            with torch.inference_mode():
                out = call(*tensors)
            outs = [out] if isinstance(out, torch.Tensor) else list(out)
            return [t.cpu().numpy() for t in outs]

        return run

    return bind


def _torch_threads_and_device(threads: int, device: str) -> None:
    """Host threads for the torch backends; on CUDA also the runtime's full-float32 settings."""
    import torch

    torch.set_num_threads(threads)
    if device != "cpu":
        from skruntime.backends.gpu import apply_gpu_determinism

        apply_gpu_determinism()


def torchscript_runner(path: Path, threads: int, device: str = "cpu") -> Runner:
    import torch

    _torch_threads_and_device(threads, device)
    return torch_runner(torch.jit.load(str(path), map_location=device), device)


def aoti_runner(path: Path, threads: int, device: str = "cpu") -> Runner:
    import torch

    _torch_threads_and_device(threads, device)
    return torch_runner(torch._inductor.aoti_load_package(str(path)), device)


# backend label -> (export format name, runner factory, thread counts)
BACKENDS: dict[str, tuple[str, Callable[[Path, int], Runner], tuple[int, ...]]] = {
    "ORT": ("ONNX", ort_runner, (1, 2)),
    "TorchScript": ("TORCHSCRIPT_CPU", torchscript_runner, (1,)),
    "AOTI": ("INDUCTOR_CPU", aoti_runner, (1,)),
    # CUDA only (one GPU; the thread count is the host's)
    "TorchScript-GPU": ("TORCHSCRIPT_GPU", partial(torchscript_runner, device="cuda"), (1,)),
    "AOTI-GPU": ("INDUCTOR_GPU", partial(aoti_runner, device="cuda"), (1,)),
}


@dataclass
class ModelResult:
    name: str
    cells: dict[str, PairTiming | str] = field(default_factory=dict)  # column -> timing/reason
    notes: list[str] = field(default_factory=list)


def column(backend: str, threads: int, batch: int) -> str:
    return f"{backend} {threads}t b{batch}"


def columns(backends: Sequence[str]) -> list[str]:
    return [column(b, t, batch) for b in backends for t in BACKENDS[b][2] for batch in BATCHES]


def _rel_err(a: np.ndarray, e: np.ndarray) -> float:
    return float(np.max(np.abs(a - e)) / max(float(np.max(np.abs(e))), 1e-30))


def bench_backend(
    bm: BenchModel,
    backend: str,
    outdir: Path,
    result: ModelResult,
    *,
    blocks: int,
    block_s: float,
    heavy: bool,
    log: Callable[[str], None],
    preset: str | None = None,
) -> None:
    fmt_name, make_runner, thread_counts = BACKENDS[backend]
    t0 = time.perf_counter()
    try:
        pair = export_pair(bm, fmt_name, outdir, preset=preset)
    except Exception as err:
        reason = f"export failed: {type(err).__name__}: {str(err).splitlines()[0][:200]}"
        for t in thread_counts:
            for batch in BATCHES:
                result.cells[column(backend, t, batch)] = "export failed"
        result.notes.append(f"{backend}: {reason}")
        log(traceback.format_exc())
        return
    log(
        f"  {backend}: exported in {time.perf_counter() - t0:.1f} s "
        f"({pair.locked_layers} layers locked, key length {pair.key_length})"
    )
    for threads in thread_counts:
        orig_bind = make_runner(pair.original, threads)
        lock_bind = make_runner(pair.locked, threads)
        for batch in BATCHES:
            col = column(backend, threads, batch)
            if bm.name == "resnet18_224" and batch > 1 and not heavy:
                result.cells[col] = "skipped (--heavy)"
                continue
            x = bm.example(batch).numpy()
            orig = orig_bind([x])
            locked = lock_bind([x, pair.key])
            err = _rel_err(locked()[0], orig()[0])
            if not err < 1e-3:
                result.cells[col] = f"mismatch {err:.1e}"
                continue
            timing = measure_pair(orig, locked, blocks=blocks, block_s=block_s)
            result.cells[col] = timing
            log(
                f"    {col}: original {timing.original * 1e3:.3f} ms, locked "
                f"{timing.locked * 1e3:.3f} ms, ratio {timing.ratio:.2f} ({timing.calls} calls)"
            )


def run_bench(
    model_names: Sequence[str],
    backends: Sequence[str],
    *,
    blocks: int,
    block_s: float,
    heavy: bool,
    log: Callable[[str], None] = print,
    presets: Sequence[str | None] = (None,),
) -> list[ModelResult]:
    """Export and time every model on every backend (per lock preset); the result rows."""
    results = []
    with tempfile.TemporaryDirectory(prefix="skprotect_overhead_") as tmp:
        for name in model_names:
            bm = BENCH_MODELS[name]
            for preset in presets:
                label = name if preset is None else f"{name} ({preset})"
                log(f"{label}: {bm.description}")
                result = ModelResult(label)
                for backend in backends:
                    bench_backend(
                        bm,
                        backend,
                        Path(tmp),
                        result,
                        blocks=blocks,
                        block_s=block_s,
                        heavy=heavy,
                        log=log,
                        preset=preset,
                    )
                results.append(result)
    return results


def _table(
    results: Sequence[ModelResult], cols: list[str], title: str, cell: Callable[[object], str]
) -> list[str]:
    """One markdown table: a row per result, a column per runtime configuration."""
    lines = [title, "", "| model | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for r in results:
        cells = [cell(r.cells.get(c, "-")) for c in cols]
        lines.append(f"| {r.name} | " + " | ".join(cells) + " |")
    return lines


def markdown_tables(results: Sequence[ModelResult], backends: Sequence[str]) -> str:
    cols = columns(backends)
    lines = _table(
        results,
        cols,
        "**Ratio locked / original (median latency)**",
        lambda v: f"{v.ratio:.2f}" if isinstance(v, PairTiming) else str(v),
    )
    lines.append("")
    lines += _table(
        results,
        cols,
        "**Original median latency (ms) → locked (ms)**",
        lambda v: (
            f"{v.original * 1e3:.3g} → {v.locked * 1e3:.3g}" if isinstance(v, PairTiming) else "-"
        ),
    )
    notes = [f"- {r.name}: {n}" for r in results for n in r.notes]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter timing blocks")
    parser.add_argument("--aoti", action="store_true", help="also AOTInductor (slow compiles)")
    parser.add_argument("--heavy", action="store_true", help="also ResNet-18 224 px at batch 32")
    parser.add_argument(
        "--models", default=",".join(BENCH_MODELS), help="comma-separated subset of models"
    )
    parser.add_argument(
        "--presets",
        default="",
        help="comma-separated locks to compare: a preset (strong, balanced), optionally with "
        "+field=value overrides of LockSettings (strong+unfold_taps_max=0); default: the "
        "default lock",
    )
    parser.add_argument(
        "--backends", default="", help="comma-separated subset of " + ", ".join(BACKENDS)
    )
    parser.add_argument("--blocks", type=positive_int, help="interleaved blocks per side")
    parser.add_argument(
        "--block-ms", type=positive_float, help="target duration of one side's block"
    )
    args = parser.parse_args(argv)
    names = comma_names(parser, args.models, "--models", "model", BENCH_MODELS)
    blocks = args.blocks or (6 if args.quick else 12)
    block_s = (args.block_ms or (150.0 if args.quick else 500.0)) / 1e3
    backends = ["ORT", "TorchScript"] + (["AOTI"] if args.aoti else [])
    if args.backends:
        backends = comma_names(parser, args.backends, "--backends", "backend", BACKENDS)
        if args.aoti and "AOTI" not in backends:  # "also AOTInductor", with --backends too
            backends.append("AOTI")
    presets: list[str | None] = [None]
    if args.presets:
        presets = list(comma_names(parser, args.presets, "--presets", "lock"))
    for p in presets:
        try:
            lock_settings(p)
        except (ValueError, TypeError) as exc:
            parser.error(f"--presets: {exc}")

    start = time.perf_counter()
    results = run_bench(
        names,
        backends,
        blocks=blocks,
        block_s=block_s,
        heavy=args.heavy,
        log=lambda s: print(s, file=sys.stderr, flush=True),
        presets=presets,
    )
    print(f"machine: {machine_line()}")
    print(f"command: {command_line()}")
    print(
        f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {blocks} interleaved "
        f"blocks per side of ~{block_s * 1e3:.0f} ms each after warm-up, medians; batch "
        f"dynamic at export (example batch {EXAMPLE_BATCH}); "
        f"total {time.perf_counter() - start:.0f} s"
    )
    print()
    print(markdown_tables(results, backends))


if __name__ == "__main__":
    sys.exit(main())
