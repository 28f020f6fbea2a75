"""Keeps ``bench/overhead.py`` working: its export, runner and timing logic on the small MLP.

No timing is asserted (the numbers depend on the machine); only that the pieces run and agree.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import overhead  # noqa: E402
from models import BENCH_MODELS  # noqa: E402


def test_overhead_logic_on_mlp(tmp_path):
    bm = BENCH_MODELS["mlp"]
    pair = overhead.export_pair(bm, "ONNX", tmp_path)
    assert pair.original.exists() and pair.locked.exists() and pair.locked_layers == 3
    x = bm.example(1).numpy()
    orig = overhead.ort_runner(pair.original, 1)([x])
    locked = overhead.ort_runner(pair.locked, 1)([x, pair.key])
    np.testing.assert_allclose(locked()[0], orig()[0], rtol=1e-4, atol=1e-4)
    timing = overhead.measure_pair(orig, locked, blocks=2, block_s=0.001, max_calls=3)
    assert timing.calls >= 4 and timing.original > 0 and timing.locked > 0
    result = overhead.ModelResult("mlp", {overhead.column("ORT", 1, 1): timing})
    table = overhead.markdown_tables([result], ["ORT"])
    assert "| mlp | " in table and f"{timing.ratio:.2f}" in table
