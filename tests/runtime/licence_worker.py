"""A licensed runtime's inferences in a process of their own, for the tests of runtimes
sharing one licence state folder. Apart from the test modules, which import torch and the
licence server: a spawned child imports only this module and what it imports (about 4 s less
per process)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from skruntime import SkRuntime


def count_in_a_process(
    outputs: Path,
    url: str,
    public_key: bytes,
    state: Path,
    x: np.ndarray,
    calls: int,
    start: Any,
    results: Any,
) -> None:
    """Run ``calls`` inferences of ``x`` with a licensed runtime of its own on the shared
    folders, all but the first once every process is ready; put its outputs (or its error)."""
    try:
        with (
            SkRuntime(
                outputs,
                licence_server=url,
                server_public_key=public_key,
                state_dir=state,
                requested_inferences=3,
            ) as rt,
            rt.load("net") as model,
        ):
            ys = [model(x)]
            start.wait(timeout=60)
            ys += [model(x) for _ in range(calls - 1)]
        results.put([y.tolist() for y in ys])
    except BaseException as e:
        results.put(f"{type(e).__name__}: {e}")
        raise
