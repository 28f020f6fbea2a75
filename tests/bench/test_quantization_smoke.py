"""Keeps ``bench/quantization.py`` working on its smallest configuration (quick tabular MLP,
one key) and checks the property of issue 5 there: with ``quantize_compatibility=True`` the
locked model quantized with ONNX Runtime loses at most 0.5 points more than the original."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import quantization  # noqa: E402

pytest.importorskip("onnxruntime.quantization")


def test_quantized_locked_mlp_matches_quantized_original(tmp_path: Path) -> None:
    task = quantization.tabular_task(quick=True)
    (row,) = quantization.run_task(
        task,
        tmp_path,
        variants=[quantization.RECOMMENDED],
        modes=("dynamic", "static"),
        keys=1,
        log=lambda line: None,
    )
    assert row.fp32_locked == [row.fp32_original]
    assert row.notes == []  # key never quantized, every trained weight int8 on both sides
    assert row.trained == 3
    for mode in ("dynamic", "static"):
        assert row.int8_original[mode] == 3 and row.int8_locked[mode] == [3]
    (excess,) = row.excesses("dynamic")
    assert excess <= quantization.TARGET_POINTS, quantization.markdown_table([row])
    # the static model was calibrated with the key: its key decoder stayed float
    static = tmp_path / f"{task.name}_locked_qc_k0_mixf.static.onnx"
    assert static.exists() and quantization.check_key_not_quantized(static) == []
    assert quantization.key_nodes(tmp_path / f"{task.name}_locked_qc_k0.pre.onnx")
