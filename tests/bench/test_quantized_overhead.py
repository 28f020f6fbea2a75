"""Keeps ``bench/quantized_overhead.py`` honest: the int8 models it times compute the model
(locked ones with their key, garbage without it), and its table has every precision.

No timing is asserted (the numbers depend on the machine)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import quantized_overhead  # noqa: E402
from models import BENCH_MODELS  # noqa: E402
from overhead import ort_runner  # noqa: E402


def _error(path: Path, inputs: list[np.ndarray], reference: np.ndarray) -> float:
    y = ort_runner(path, 1)(inputs)()[0]
    return float(np.linalg.norm(y - reference) / np.linalg.norm(reference))


def test_the_timed_int8_models_compute_the_model_with_the_key_only(tmp_path: Path) -> None:
    models = quantized_overhead.quantized_pair(
        "mlp", tmp_path, "strong+quantize_compatibility=True"
    )
    assert sorted(models) == sorted(
        f"{p} {side}" for p in quantized_overhead.PRECISIONS for side in ("original", "locked")
    )
    x = BENCH_MODELS["mlp"].example(8, seed=3).numpy()
    reference = ort_runner(models["fp32 original"][0], 1)([x])()[0]
    for name, (path, key) in models.items():
        inputs = [x] if key is None else [x, key]
        assert _error(path, inputs, reference) < 0.05, name
        if key is not None:
            assert _error(path, [x, np.zeros_like(key)], reference) > 0.5, name


def test_table_has_every_precision_and_ratio() -> None:
    times = {f"{p} {side}": 1e-3 for p in quantized_overhead.PRECISIONS for side in ("original",)}
    times |= {f"{p} locked": 2e-3 for p in quantized_overhead.PRECISIONS}
    lines = quantized_overhead.table({"mlp": {1: times}}).splitlines()
    assert lines[0].count("original → locked (ms), ratio") == 3
    assert lines[2] == ("| mlp | 1 | 1 → 2, **2.00** | 1 → 2, **2.00** | 1 → 2, **2.00** |")
