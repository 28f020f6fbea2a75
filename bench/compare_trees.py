"""The lock's overhead as built by several source trees, side by side in one run.

A change to how the lock is spelled in the exported graph (not to what it stores) is judged by
timing the graphs of the commit before and after it against the same original, in the same
process: two separate ``bench/overhead.py`` runs differ by more than such a change on a shared
machine.  Each tree (a checkout of this project, e.g. ``git worktree add /tmp/before <commit>``)
locks and exports every model with the bench's ``export_pair`` (seed 0: the same stored weights
and key wherever the lock's construction is unchanged) in a subprocess that imports that tree's
``src/``.  This process then loads the original and every tree's locked model into the
``--backend`` (onnxruntime by default, or TorchScript or AOTInductor; CPU, 1 thread), checks
each against the original, and times them all interleaved
(:func:`machine.measure_interleaved`), ``--rounds`` times.  It prints per model and batch each
tree's ratio to the original in every round and their median, and for onnxruntime the
optimised node count of each graph (extended level, outer graph; a ``Scan``'s body is not
counted).

Usage::

    git worktree add /tmp/before <commit>
    python bench/compare_trees.py --trees /tmp/before,. --models transformer,lstm --rounds 3
    python bench/compare_trees.py --trees /tmp/before,. --models resnet18_32 --backend AOTI

No result is asserted: the numbers depend on the machine, which the output names.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from machine import (  # noqa: E402
    comma_names,
    machine_line,
    measure_interleaved,
    positive_float,
    positive_int,
)
from models import BENCH_MODELS  # noqa: E402
from overhead import BACKENDS, BATCHES, _rel_err, export_pair  # noqa: E402


def export_models(outdir: Path, models: list[str], backend: str) -> None:
    """Lock and export ``models`` in ``backend``'s format with the ``skprotect_pytorch`` this
    process imports; the artifacts' paths go to a list file beside them."""
    outdir.mkdir(parents=True, exist_ok=True)
    for name in models:
        pair = export_pair(BENCH_MODELS[name], BACKENDS[backend][0], outdir)
        np.save(outdir / f"{name}_key.npy", pair.key)
        (outdir / f"{name}_paths.txt").write_text(f"{pair.original}\n{pair.locked}\n")


def artifacts(outdir: Path, model: str) -> tuple[Path, Path]:
    """The original and locked artifact that :func:`export_models` wrote for ``model``."""
    original, locked = (outdir / f"{model}_paths.txt").read_text().split()
    return Path(original), Path(locked)


def export_tree(tree: Path, outdir: Path, models: list[str], backend: str) -> None:
    """Run :func:`export_models` in a subprocess that imports ``tree/src``; fail clearly if
    that tree is not a checkout of this project or its package is not the one imported."""
    src = (tree / "src").resolve()
    if not (src / "skprotect_pytorch").is_dir():
        raise SystemExit(f"{tree}: no src/skprotect_pytorch there; pass checkouts of skprotect.")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]),
    }
    check = "import skprotect_pytorch, sys; sys.stdout.write(skprotect_pytorch.__file__)"
    imported = subprocess.run(
        [sys.executable, "-c", check], env=env, capture_output=True, text=True, check=True
    ).stdout
    if not Path(imported).resolve().is_relative_to(src):
        raise SystemExit(f"{tree}: Python imports skprotect_pytorch from {imported}, not {src}.")
    args = [sys.executable, str(Path(__file__).resolve()), "--export-to", str(outdir)]
    subprocess.run([*args, "--models", ",".join(models), "--backend", backend], env=env, check=True)


def node_count(path: Path) -> int:
    """Nodes of the outer graph after onnxruntime's extended (hardware-independent) passes."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = str(Path(tmp) / "optimised.onnx")
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return len(onnx.load(so.optimized_model_filepath).graph.node)


def compare(
    dirs: dict[str, Path],
    models: list[str],
    backend: str,
    *,
    rounds: int,
    blocks: int,
    block_s: float,
) -> list[str]:
    """Time every tree's locked model against the original; markdown lines of the results."""
    labels = list(dirs)
    first = dirs[labels[0]]
    runner = BACKENDS[backend][1]
    lines = ["| model | batch | " + " | ".join(labels) + " |", "|---|---:|" + "---:|" * len(labels)]
    for m in models:
        original = runner(artifacts(first, m)[0], 1)
        locked = {t: runner(artifacts(d, m)[1], 1) for t, d in dirs.items()}
        keys = {t: np.load(d / f"{m}_key.npy") for t, d in dirs.items()}
        for batch in BATCHES:
            x = BENCH_MODELS[m].example(batch).numpy()
            calls = {"original": original([x])}
            reference = calls["original"]()[0]
            for t in labels:
                calls[t] = locked[t]([x, keys[t]])
                err = _rel_err(calls[t]()[0], reference)
                if not err < 1e-3:
                    raise SystemExit(f"{m} from {t} differs from the original by {err:.1e}.")
            ratios: dict[str, list[float]] = {t: [] for t in labels}
            for _ in range(rounds):
                medians, _calls = measure_interleaved(calls, blocks=blocks, block_s=block_s)
                for t in labels:
                    ratios[t].append(medians[t] / medians["original"])
            cells = [
                f"{statistics.median(r):.2f} ({', '.join(f'{v:.2f}' for v in r)})"
                for r in ratios.values()
            ]
            lines.append(f"| {m} | {batch} | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    if backend == "ORT":
        nodes = {m: [str(node_count(artifacts(d, m)[1])) for d in dirs.values()] for m in models}
        lines += [
            "",
            "Optimised nodes: " + "; ".join(f"{m} " + " → ".join(n) for m, n in nodes.items()),
        ]
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trees", help="comma-separated checkouts of skprotect, oldest first")
    parser.add_argument("--models", default="mlp,transformer,lstm,gru")
    parser.add_argument(
        "--backend", default="ORT", choices=[b for b in BACKENDS if not b.endswith("-GPU")]
    )
    parser.add_argument(
        "--rounds", type=positive_int, default=3, help="timing rounds per model and batch"
    )
    parser.add_argument(
        "--blocks", type=positive_int, default=12, help="interleaved blocks per round"
    )
    parser.add_argument(
        "--block-ms", type=positive_float, default=100.0, help="duration of one block"
    )
    parser.add_argument("--export-to", help=argparse.SUPPRESS)  # the per-tree subprocess
    args = parser.parse_args(argv)
    models = comma_names(parser, args.models, "--models", "model", BENCH_MODELS)
    if args.export_to:
        export_models(Path(args.export_to), models, args.backend)
        return
    trees = [Path(t.strip()) for t in (args.trees or "").split(",") if t.strip()]
    if len(trees) < 2:
        parser.error("--trees needs at least two checkouts")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="skprotect_trees_") as tmp:
        dirs = {}
        for i, tree in enumerate(trees):
            label = f"{tree.resolve().name or tree} ({i})"
            dirs[label] = Path(tmp) / str(i)
            print(f"exporting {', '.join(models)} with {tree} ...", flush=True)
            export_tree(tree, dirs[label], models, args.backend)
        lines = compare(
            dirs,
            models,
            args.backend,
            rounds=args.rounds,
            blocks=args.blocks,
            block_s=args.block_ms / 1e3,
        )
    print()
    print(f"machine: {machine_line()}")
    print(f"command: python {' '.join(sys.argv)}")
    print(
        f"ratio locked / original, median of {args.rounds} rounds (each round in brackets), "
        f"{args.backend} CPU, 1 thread; total {time.perf_counter() - start:.0f} s"
    )
    print()
    print("\n".join(lines))


if __name__ == "__main__":
    main()
