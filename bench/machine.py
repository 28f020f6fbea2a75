"""What every benchmark shares: the machine line it prints (CPU, cores, load, OS, library
versions) and the wall-clock timer of its calls."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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


def timed(fn: Callable[[], object], n: int) -> list[float]:
    """Wall-clock seconds of each of ``n`` calls of ``fn``."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times
