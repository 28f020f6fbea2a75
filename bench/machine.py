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
