"""What every benchmark shares: the machine line it prints (CPU, cores, load, OS, library
versions), the wall-clock timer of its calls, the interleaved timing of several sides and the
argparse types of their counts and durations."""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line() -> str:
    """One line naming the CPU, usable cores, current load and the library versions."""
    import numpy as np
    import onnxruntime
    import torch

    import skruntime

    cores = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    try:
        load = " load average {:.2f} {:.2f} {:.2f};".format(*os.getloadavg())
    except OSError:
        load = ""
    gpu = f" GPU {torch.cuda.get_device_name()};" if torch.cuda.is_available() else ""
    return (
        f"{cpu_model()}, {cores} logical cores ({usable} usable),{load}{gpu} {platform.system()} "
        f"{platform.release()}; Python {platform.python_version()}, numpy {np.__version__}, "
        f"onnxruntime {onnxruntime.__version__}, torch {torch.__version__}, "
        f"skruntime {skruntime.__version__}"
    )


def positive_int(text: str) -> int:
    """An argparse type: an integer ≥ 1, so that 0 is refused, not read as the default or
    timed as nothing after minutes of exports."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0 (a duration)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number above 0, got {text}")
    return value


def comma_names(
    parser: argparse.ArgumentParser,
    text: str,
    option: str,
    what: str,
    choices: Iterable[str] | None = None,
) -> list[str]:
    """The names of a comma-separated option, each given once and, with ``choices``, one of
    them, or a usage error: an empty list measured nothing and printed an empty table, and a
    name given twice was measured twice."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    allowed = None if choices is None else list(choices)
    listed = "" if allowed is None else f"; choose from {', '.join(allowed)}"
    if not names:
        parser.error(f"{option} names no {what}{listed}")
    if allowed is not None and (unknown := [n for n in names if n not in allowed]):
        parser.error(f"unknown {what}(s) {unknown}{listed}")
    if repeated := sorted({n for n in names if names.count(n) > 1}):
        parser.error(f"{option} lists {', '.join(repeated)} twice; give each {what} once")
    return names


def timed(fn: Callable[[], object], n: int) -> list[float]:
    """Wall-clock seconds of each of ``n`` calls of ``fn``."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def measure_interleaved(
    calls: dict[str, Callable[[], object]], *, blocks: int, block_s: float, max_calls: int = 2000
) -> tuple[dict[str, float], int]:
    """Median seconds per call of every side, after warm-up, timed in ``blocks`` interleaved
    blocks (the order reverses every other block, so no side always runs first), and the
    number of calls per side.  Load and drift on the machine hit all sides alike.

    The calls per block are chosen so that the slowest side's block lasts about ``block_s``
    seconds (at least 2 calls).
    """
    for _ in range(2):  # warm-up (TorchScript profiles 2 runs)
        for fn in calls.values():
            fn()
    probe = max(statistics.median(timed(fn, 3)) for fn in calls.values())
    per_block = int(min(max_calls, max(2, block_s / max(probe, 1e-7))))
    for fn in calls.values():
        timed(fn, per_block)  # warm-up at the measured rate
    times: dict[str, list[float]] = {name: [] for name in calls}
    order = list(calls)
    for b in range(blocks):
        for name in order if b % 2 == 0 else order[::-1]:
            times[name] += timed(calls[name], per_block)
    return {name: statistics.median(t) for name, t in times.items()}, per_block * blocks
