"""Peak memory (RSS) of protecting a large model, next to the model's size and a plain export.

Each case runs in its own child process (so that peaks do not mix), which builds the model
with random weights, runs it once, then either

* **plain**: ``torch.onnx.export(dynamo=True, external_data=False)`` of the model, as a user
  would ship it unprotected, or
* **protect**: ``SkProtectorPyTorch.protect_new_model`` (deep copy, lock, eager check, export,
  load and run the artifact with and without the key, hashes, staging, configuration).

The child reports its peak RSS (``VmHWM``, reset when the export or protection starts)
and its RSS before it ("base": Python, torch, the model and one forward); "extra" = peak -
base is what the export or the protection itself needed. With ``--stages`` the child also
samples its RSS every 10 ms and prints the peak of each stage of the pipeline (the functions
in :data:`STAGES` that the source tree has), to show where copies of the weights are made;
a sample can miss a peak shorter than 10 ms, so the overall peak may exceed every stage's.
``--compare-src PATH`` (repeatable) runs the protection again with ``PATH`` (another
checkout's ``src`` folder) first on the import path: before/after of a change side by side.

Usage::

    python bench/protect_memory.py                          # MLP 100M + Transformer 50M, ONNX
    python bench/protect_memory.py --formats ONNX,TORCHSCRIPT_CPU --stages
    python bench/protect_memory.py --compare-src /tmp/old/src --mlp-million 100 --cases mlp
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from torch import nn

from machine import comma_names, machine_line, positive_float

MB = 1024 * 1024
RESULT_PREFIX = "PROTECT_MEMORY_RESULT "
CASES = ("mlp", "transformer")
FORMATS = ("ONNX", "TORCHSCRIPT_CPU")
# "module:attribute" (a function, or Class.method) timed and sampled with --stages; those a
# source tree lacks are skipped, so that an older checkout can be compared
STAGES = (
    "skprotect_pytorch.pipeline:copy_model",
    "skprotect_pytorch.pipeline:_run_reference",
    "skprotect_pytorch.pipeline:lock_model",
    "skprotect_pytorch.pipeline:_run_group",
    "skprotect_pytorch.pipeline:load_artifact",
    "skprotect_pytorch.pipeline:check_outputs",
    "skprotect_pytorch.pipeline:sha256_file",
    "skprotect_pytorch.pipeline:_commit",
    "skprotect_pytorch.export.onnx:OnnxExporter.export",
    "skprotect_pytorch.export.onnx:_torch_onnx_export",
    "skprotect_pytorch.export.onnx:_opset",
    "skprotect_pytorch.export.onnx:_check_dynamic_axes",
    "skprotect_pytorch.export.onnx:_save_single_file",
    "skprotect_pytorch.export.onnx:_check_names",
    "skprotect_pytorch.export.onnx:_inline_weights",
    "skprotect_pytorch.export.torchscript:TorchScriptExporter.export",
)


def rss_mb() -> float:
    """The current resident set size of this process, in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MB


def peak_rss_mb() -> float:
    """The peak resident set size of this process so far, in MiB: ``VmHWM``, not ``ru_maxrss``,
    which Linux carries over from the parent process across ``exec`` (a child would report
    at least its parent's peak)."""
    with open("/proc/self/status") as f:
        hwm = next(line for line in f if line.startswith("VmHWM:"))
    return int(hwm.split()[1]) / 1024


def reset_peak_rss() -> None:
    """Start the peak RSS (``VmHWM``) afresh from the current RSS (Linux 4.0+), so that a
    stage's peak is not one that an earlier step reached and freed."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


@dataclass
class Stage:
    """The RSS of one stage: at its first entry, its peak over every call, at its last exit."""

    entry: float
    peak: float
    exit: float = 0.0
    calls: int = 0
    seconds: float = 0.0


@dataclass
class StageSampler:
    """Samples RSS every ``interval`` seconds into the peak of every stage running."""

    interval: float = 0.01
    stages: dict[str, Stage] = field(default_factory=dict)
    running: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def _sample(self) -> None:
        now = rss_mb()
        for name in list(self.running):
            self.stages[name].peak = max(self.stages[name].peak, now)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        thread = threading.Thread(target=self._loop, daemon=True)
        thread.start()
        try:
            yield
        finally:
            self._stop.set()
            thread.join()

    def wrap(self, name: str, func: Callable[..., Any]) -> Callable[..., Any]:
        """``func``, recorded as stage ``name``."""

        @functools.wraps(func)
        def staged(*args: Any, **kwargs: Any) -> Any:
            now = rss_mb()
            stage = self.stages.setdefault(name, Stage(entry=now, peak=now))
            self.running.append(name)
            start = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                self._sample()
                self.running.remove(name)
                stage.exit = rss_mb()
                stage.calls += 1
                stage.seconds += time.perf_counter() - start

        return staged

    def install(self, targets: tuple[str, ...]) -> None:
        """Wrap every target of ``targets`` ("module:attr" or "module:Class.method") present."""
        for target in targets:
            module_name, attr = target.split(":")
            try:
                owner: Any = importlib.import_module(module_name)
            except ImportError:
                continue
            *path, name = attr.split(".")
            for part in path:
                owner = getattr(owner, part, None)
            if owner is not None and callable(getattr(owner, name, None)):
                setattr(owner, name, self.wrap(attr, getattr(owner, name)))


def build_model(case: str, million: float) -> tuple[nn.Module, torch.Tensor]:
    """The model of ``case`` with about ``million`` million float32 parameters, and an input.

    ``mlp``: 4 square ``Linear`` layers (width ≈ sqrt(N/4)) with ReLU; ``transformer``: a 4-layer
    ``nn.TransformerEncoder`` (d_model ≈ sqrt(N/48), 8 heads, feed-forward 4·d, batch_first)
    on 16 tokens, mean-pooled into a 10-way linear head.
    """
    torch.manual_seed(0)
    if case == "mlp":
        width = max(8, round((million * 1e6 / 4) ** 0.5))
        layers: list[nn.Module] = []
        for _ in range(4):
            layers += [nn.Linear(width, width), nn.ReLU()]
        return nn.Sequential(*layers[:-1]).eval(), torch.randn(2, width)
    d_model = max(8, round((million * 1e6 / 48) ** 0.5 / 8) * 8)
    return Encoder(d_model).eval(), torch.randn(2, 16, d_model)


class Encoder(nn.Module):
    """A ``batch_first`` Transformer encoder, mean-pooled into a 10-way linear head."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(d_model, 8, 4 * d_model, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 4, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x).mean(dim=1))


def model_mb(model: Any) -> float:
    """The size of the model's parameters and buffers, in MiB."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors) / MB


def plain_export(model: Any, x: Any, workdir: Path) -> None:
    """What a user without skprotect would ship: one self-contained ONNX file."""
    torch.onnx.export(
        model,
        (x,),
        str(workdir / "plain.onnx"),
        dynamo=True,
        external_data=False,
        opset_version=18,
    )


def protect(model: Any, x: Any, formats: list[str]) -> None:
    """The product's protection of ``model`` into ./outputs (the child's working folder)."""
    import functools as ft
    import operator

    from skprotect_pytorch.protect import SkProtectorPyTorch

    fmts = ft.reduce(operator.or_, (SkProtectorPyTorch.ExportFormat[f] for f in formats))
    protector = SkProtectorPyTorch(application_name="bench_memory")
    with contextlib.redirect_stdout(sys.stderr):
        protector.protect_new_model(model, "big", [x], model_export_formats=fmts, test_key=True)


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    """One case in this (child) process; returns what the parent prints."""
    torch.set_num_threads(spec.get("threads") or torch.get_num_threads())
    sampler = StageSampler()
    if spec["stages"]:
        sampler.install(STAGES)
    model, x = build_model(spec["case"], spec["million"])
    with torch.no_grad():
        model(x)
    reset_peak_rss()
    base = rss_mb()
    start = time.perf_counter()
    with sampler.active():
        if spec["side"] == "plain":
            plain_export(model, x, Path.cwd())
        else:
            protect(model, x, spec["formats"])
    return {
        "model_mb": model_mb(model),
        "base_mb": base,
        "peak_mb": peak_rss_mb(),
        "seconds": time.perf_counter() - start,
        "stages": {name: vars(stage) for name, stage in sampler.stages.items()},
    }


def spawn(spec: dict[str, Any], src: Path | None) -> dict[str, Any]:
    """Run ``spec`` in a child process (in a fresh temporary folder, ``src`` first on the
    import path when given) and return its result."""
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(src), env.get("PYTHONPATH", "")]).rstrip(":")
    with tempfile.TemporaryDirectory(prefix="skprotect_memory_") as tmp:
        done = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
            cwd=tmp,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    tail = "\n".join(done.stderr.strip().splitlines()[-15:])
    raise RuntimeError(f"the {spec['side']} child of {spec['case']} failed:\n{tail}")


def stage_lines(label: str, stages: dict[str, dict[str, float]]) -> list[str]:
    """The per-stage table of one child, in the order the stages first ran."""
    lines = [
        f"stages of {label} (RSS MiB):",
        "| stage | calls | entry | peak | exit | peak - entry | s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in stages.items():
        lines.append(
            f"| {name} | {s['calls']} | {s['entry']:.0f} | {s['peak']:.0f} | {s['exit']:.0f} | "
            f"{s['peak'] - s['entry']:.0f} | {s['seconds']:.1f} |"
        )
    return lines


def result_row(case: str, label: str, plain: dict[str, Any], prot: dict[str, Any]) -> str:
    """One table row: sizes, peaks and the two ratios."""
    plain_extra = plain["peak_mb"] - plain["base_mb"]
    extra = prot["peak_mb"] - prot["base_mb"]
    return (
        f"| {case} | {label} | {prot['model_mb']:.1f} | {plain['peak_mb']:.0f} "
        f"({plain_extra:.0f}) | {prot['peak_mb']:.0f} ({extra:.0f}) | "
        f"{prot['peak_mb'] / prot['model_mb']:.2f} | {prot['peak_mb'] / plain['peak_mb']:.2f} | "
        f"{extra / prot['model_mb']:.2f} | {prot['seconds']:.0f} |"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated: mlp,transformer")
    parser.add_argument(
        "--mlp-million", type=positive_float, default=100.0, help="MLP parameters (M)"
    )
    parser.add_argument(
        "--transformer-million",
        type=positive_float,
        default=50.0,
        help="Transformer parameters (M)",
    )
    parser.add_argument("--formats", default="ONNX", help="comma-separated: ONNX,TORCHSCRIPT_CPU")
    parser.add_argument("--stages", action="store_true", help="print each stage's RSS peak")
    parser.add_argument(
        "--compare-src",
        type=Path,
        action="append",
        default=[],
        help="another checkout's src/, protected with too (repeatable): before/after",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.case_list = comma_names(parser, args.cases, "--cases", "case", CASES)
    if args.threads < 0:
        parser.error(f"--threads must be 0 (torch's count) or more, got {args.threads}")
    args.format_list = comma_names(parser, args.formats.upper(), "--formats", "format", FORMATS)
    if missing := [p for p in args.compare_src if not (p / "skprotect_pytorch").is_dir()]:
        parser.error(f"--compare-src {missing[0]} has no skprotect_pytorch package")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        print(RESULT_PREFIX + json.dumps(run_child(json.loads(args.child))), flush=True)
        return 0
    trees: list[tuple[str, Path | None]] = [(f"src {p}", p.resolve()) for p in args.compare_src]
    trees.append(("this tree", None))
    rows: list[str] = []
    details: list[str] = []
    start = time.perf_counter()
    for case in args.case_list:
        million = args.mlp_million if case == "mlp" else args.transformer_million
        spec = {"case": case, "million": million, "formats": args.format_list}
        spec |= {"stages": args.stages, "threads": args.threads}
        plain = spawn({**spec, "side": "plain", "stages": False}, None)
        for label, src in trees:
            prot = spawn({**spec, "side": "protect"}, src)
            rows.append(result_row(case, label, plain, prot))
            print(rows[-1], file=sys.stderr, flush=True)
            if args.stages:
                details += ["", *stage_lines(f"{case}, {label}", prot["stages"])]
    print(f"machine: {machine_line()}")
    print(f"command: python {' '.join(['bench/protect_memory.py', *(argv or sys.argv[1:])])}")
    print(
        f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; formats "
        f"{', '.join(args.format_list)}; total {time.perf_counter() - start:.0f} s"
    )
    print()
    print(
        "| model | tree | model MiB | plain export peak (extra) MiB | protect peak (extra) MiB "
        "| protect peak / model | protect peak / plain peak | protect extra / model | "
        "protect s |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    print("\n".join(details))
    return 0


if __name__ == "__main__":
    sys.exit(main())
