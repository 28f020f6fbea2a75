"""Time to protect a model vs time to export it plainly, per model and format, as a ratio.

* **protect** = ``lock_model`` (default lock, BatchNorm folding included) + the eager check of the
  locked model against the original + export of the locked model + ``verify_artifact`` (load the
  artifact, run it on the example with the static key, compare);
* **plain** = export of the original model + ``verify_artifact`` of it, same format, same
  options (batch dynamic, example batch 2).

Both use the project's exporters (``skprotect_pytorch.export``); the product's
``SkProtectorPyTorch`` adds file staging, hashes and a zero-key check on top, which are not
timed here. One untimed plain export of the MLP per format first warms the process up; then
plain and protect runs alternate (plain, protect, protect, plain, ...) and the median of
``--repeats`` runs of each is reported. AOTInductor (``--aoti``) runs with Inductor's
caches disabled (``TORCHINDUCTOR_FORCE_DISABLE_CACHES=1``) so that a second compile is not
served from the first one's cache.

Usage::

    python bench/protect_time.py --quick        # 1 run each, ONNX and TorchScript
    python bench/protect_time.py --aoti         # 3 runs each, + AOTInductor CPU
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import comma_names, machine_line, positive_int
from models import BENCH_MODELS
from overhead import EXAMPLE_BATCH, command_line, export_options, lock

FORMATS = {"ONNX": "ONNX", "TorchScript": "TORCHSCRIPT_CPU", "AOTI": "INDUCTOR_CPU"}


def export_once(name: str, fmt_name: str, outdir: Path, *, protect: bool) -> float:
    """Seconds to export ``name`` plainly, or to protect it (lock, eager check, export), and
    verify the artifact against the original's outputs."""
    import torch

    from skprotect_pytorch.export import get_exporter, verify_artifact
    from skprotect_pytorch.formats import ExportFormat

    bm = BENCH_MODELS[name]
    model, x = bm.make(), bm.example(EXAMPLE_BATCH)
    exporter = get_exporter(ExportFormat[fmt_name])
    path = outdir / f"{name}_{'locked' if protect else 'plain'}{exporter.extension}"
    start = time.perf_counter()
    opts = export_options(x)
    with torch.no_grad():
        expected = [model(x).numpy()]
    if not protect:
        exporter.export(model, (x,), path, opts, with_key=False)
        verify_artifact(exporter, path, opts, [x.numpy()], expected)
        return time.perf_counter() - start
    locked = lock(model, 0, name)
    key = locked.layout.static_key()
    with torch.no_grad():
        eager = locked.keyed(x, torch.from_numpy(key)).numpy()
    err = float(np.max(np.abs(eager - expected[0])) / np.max(np.abs(expected[0])))
    if err > 1e-4:
        raise SystemExit(f"{name}: locked model differs from the original ({err:.2e})")
    exporter.export(locked.keyed, (x, torch.from_numpy(key)), path, opts, with_key=True)
    verify_artifact(exporter, path, opts, [x.numpy(), key], expected)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one run of each instead of three")
    parser.add_argument("--aoti", action="store_true", help="also AOTInductor CPU (slow)")
    parser.add_argument("--repeats", type=positive_int, help="runs of each side (median)")
    parser.add_argument(
        "--models", default=",".join(BENCH_MODELS), help="comma-separated subset of models"
    )
    args = parser.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    names = comma_names(parser, args.models, "--models", "model", BENCH_MODELS)
    formats = ["ONNX", "TorchScript"] + (["AOTI"] if args.aoti else [])
    if args.aoti:
        os.environ["TORCHINDUCTOR_FORCE_DISABLE_CACHES"] = "1"
    rows: dict[str, dict[str, tuple[float, float] | str]] = {}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="skprotect_protect_time_") as tmp:
        # untimed warm-up: the first export in a process pays imports and exporter set-up
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            for label in formats:
                export_once("mlp", FORMATS[label], Path(tmp), protect=False)
        for name in names:
            rows[name] = {}
            for label in formats:
                fmt_name = FORMATS[label]
                plain: list[float] = []
                prot: list[float] = []
                try:
                    with (
                        contextlib.redirect_stdout(io.StringIO()),
                        contextlib.redirect_stderr(io.StringIO()),
                    ):
                        for i in range(repeats):
                            order = (0, 1) if i % 2 == 0 else (1, 0)
                            for side in order:  # 0: plain export, 1: protect
                                seconds = export_once(name, fmt_name, Path(tmp), protect=side == 1)
                                (plain, prot)[side].append(seconds)
                except Exception as err:
                    rows[name][label] = f"failed: {type(err).__name__}"
                    print(f"{name} {label}: {err!r:.300}", file=sys.stderr, flush=True)
                    continue
                p, q = statistics.median(plain), statistics.median(prot)
                rows[name][label] = (p, q)
                print(
                    f"{name} {label}: plain {p:.2f} s, protect {q:.2f} s, ratio {q / p:.2f}",
                    file=sys.stderr,
                    flush=True,
                )
    print(f"machine: {machine_line()}")
    print(f"command: {command_line()}")
    print(
        f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; median of {repeats} "
        f"run(s) per side, alternating; total {time.perf_counter() - start:.0f} s"
    )
    print()
    print("| model | " + " | ".join(f"{f} plain → protect (s) | ratio" for f in formats) + " |")
    print("|---|" + "---:|---:|" * len(formats))
    for name, cells in rows.items():
        out = []
        for label in formats:
            v = cells.get(label, "-")
            if isinstance(v, tuple):
                out += [f"{v[0]:.2f} → {v[1]:.2f}", f"{v[1] / v[0]:.2f}"]
            else:
                out += [str(v), "-"]
        print(f"| {name} | " + " | ".join(out) + " |")


if __name__ == "__main__":
    sys.exit(main())
