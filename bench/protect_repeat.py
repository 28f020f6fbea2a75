"""Memory of repeated protections in one process: does RSS grow with each model protected?

Users protect many models (one per customer, say) in a loop in one long-running process. For
each format this runs ``--runs`` protections of the same MLP (``--layers`` square ``Linear``
layers ``--width`` wide, about 52 MB at the defaults) in a child process of its own, each into a
fresh outputs folder, and prints after each (once ``gc.collect()`` ran):

* **RSS** (MiB) of the process, after ``malloc_trim`` (glibc's free pages returned);
* **tensors**: the bytes of the distinct tensor storages that Python objects still reach
  (``gc.get_objects()``; the user's model and inputs included);
* **locked alive**: how many of the locked model's parameters are still alive (weak
  references taken when the exporter receives the locked model). Zero means the protection
  released the locked weights; a parameter held from C++ (a TorchScript graph, a Dynamo
  cache) counts as alive too, although Python no longer reaches it.

``--compare-src PATH`` (repeatable) runs the same with ``PATH`` (another checkout's ``src``
folder) first on the import path, for a before/after of a change side by side.

Usage::

    python bench/protect_repeat.py                             # ONNX, TORCHSCRIPT_CPU: 6 runs
    python bench/protect_repeat.py --formats INDUCTOR_CPU --runs 3
    python bench/protect_repeat.py --compare-src /tmp/old/src --formats TORCHSCRIPT_CPU
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import subprocess
import sys
import tempfile
import weakref
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import comma_names, machine_line, positive_int

MB = 1024 * 1024
RESULT_PREFIX = "PROTECT_REPEAT_RESULT "


def rss_mb() -> float:
    """The resident set size of this process, in MiB, once glibc returned its free heap pages
    (``malloc_trim``): what stays is memory in use, not the allocator's leftovers."""
    ctypes.CDLL(None).malloc_trim(0)
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MB


def tensor_mb() -> tuple[float, int]:
    """MiB of the distinct storages of the real tensors that Python objects reach, and how many
    tensors without storage (fake or functional tensors of a trace, meta tensors) are alive."""
    import torch

    seen: dict[int, int] = {}
    fake = 0
    for obj in gc.get_objects():
        kind = type(obj)  # not isinstance: it runs module __getattr__ hooks, which warn
        if not issubclass(kind, torch.Tensor):
            continue
        if kind not in (torch.Tensor, torch.nn.Parameter) or obj.is_meta:
            fake += 1
            continue
        storage = obj.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values()) / MB, fake


def child(fmt: str, runs: int, width: int, layers: int) -> None:
    """Protect the MLP ``runs`` times to ``fmt`` in this process; print one JSON line per run."""
    import torch
    from torch import nn

    from skprotect_pytorch.export import get_exporter
    from skprotect_pytorch.formats import ExportFormat
    from skprotect_pytorch.protect import SkProtectorPyTorch

    torch.manual_seed(0)
    model = nn.Sequential(*(nn.Linear(width, width) for _ in range(layers))).eval()
    x = torch.randn(2, width)
    export_format = ExportFormat[fmt]
    exporter_class = type(get_exporter(export_format))
    original_export = exporter_class.export
    locked: list[weakref.ref] = []

    def watched_export(self: object, module: nn.Module, *args: object, **kwargs: object) -> object:
        locked.extend(weakref.ref(p) for p in module.parameters())
        return original_export(self, module, *args, **kwargs)

    exporter_class.export = watched_export
    gc.collect()
    base = rss_mb()
    tensors, fake = tensor_mb()
    row = {"run": 0, "rss": base, "tensors": tensors, "fake": fake}
    print(RESULT_PREFIX + json.dumps(row), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        for run in range(1, runs + 1):
            locked.clear()
            protector = SkProtectorPyTorch(application_name=f"app{run}")
            protector.protect_new_model(model, f"m{run}", [x], model_export_formats=export_format)
            del protector
            gc.collect()
            alive = sum(ref() is not None for ref in locked)
            tensors, fake = tensor_mb()
            row = {"run": run, "rss": rss_mb(), "tensors": tensors, "fake": fake}
            row.update(alive=alive, locked=len(locked))
            print(RESULT_PREFIX + json.dumps(row), flush=True)


def run_side(src: str | None, fmt: str, args: argparse.Namespace) -> list[dict]:
    """Run :func:`child` in a fresh interpreter (with ``src`` first on the import path)."""
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    command = [sys.executable, __file__, "--child", fmt, "--runs", str(args.runs)]
    command += ["--width", str(args.width), "--layers", str(args.layers)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        sys.exit(f"{fmt} ({src or 'this tree'}) failed:\n{done.stderr[-4000:]}")
    lines = done.stdout.splitlines()
    return [
        json.loads(line[len(RESULT_PREFIX) :]) for line in lines if line.startswith(RESULT_PREFIX)
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--formats", default="ONNX,TORCHSCRIPT_CPU")
    parser.add_argument("--runs", type=positive_int, default=6)
    parser.add_argument("--width", type=positive_int, default=1800)
    parser.add_argument("--layers", type=positive_int, default=4)
    parser.add_argument("--compare-src", action="append", default=[], metavar="PATH")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.runs, args.width, args.layers)
        return
    from skprotect_pytorch.formats import ExportFormat

    formats = comma_names(parser, args.formats, "--formats", "format", ExportFormat.__members__)
    if missing := [p for p in args.compare_src if not (Path(p) / "skprotect_pytorch").is_dir()]:
        parser.error(f"--compare-src {missing[0]} has no skprotect_pytorch package")
    print(machine_line())
    size = args.layers * (args.width * args.width + args.width) * 4 / MB
    print(f"MLP {args.layers} x Linear({args.width}, {args.width}): {size:.0f} MiB of weights")
    sides = [("this tree", None), *((src, src) for src in args.compare_src)]
    for fmt in formats:
        for label, src in sides:
            rows = run_side(src, fmt, args)
            print(
                f"\n{fmt}, {label}: run | RSS MiB (+ since the first) | tensors MiB | fake "
                "tensors | locked alive"
            )
            first = rows[1]["rss"] if len(rows) > 1 else rows[0]["rss"]
            for row in rows:
                alive = f"{row['alive']}/{row['locked']}" if "alive" in row else "-"
                grown = f"{row['rss'] - first:+.0f}" if row["run"] else "before"
                print(
                    f"  {row['run']} | {row['rss']:.0f} ({grown}) | {row['tensors']:.0f} | "
                    f"{row['fake']} | {alive}"
                )


if __name__ == "__main__":
    main()
