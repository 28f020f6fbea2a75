"""Keeps ``bench/quantization.py`` working on its smallest configuration (quick tabular MLP,
one key) and checks the property of issue 5 there: with ``quantize_compatibility=True`` the
locked model quantized with ONNX Runtime loses at most 0.5 points more than the original."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from skprotect_pytorch.quantization import check_key_not_quantized, key_nodes

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import quantization  # noqa: E402

pytest.importorskip("onnxruntime.quantization")


def test_quantized_locked_mlp_matches_quantized_original(tmp_path: Path) -> None:
    import onnx

    task = quantization.tabular_task(quick=True)
    (row,) = quantization.run_task(
        task,
        tmp_path,
        variants=[quantization.RECOMMENDED],
        modes=("dynamic", "static"),
        keys=1,
        latency=True,
        latency_block_s=0.005,
        log=lambda line: None,
    )
    assert row.fp32_locked == [row.fp32_original]
    assert row.notes == []  # key never quantized, every trained weight int8 on both sides
    assert row.trained == 3
    for mode in ("dynamic", "static"):
        assert row.int8_original[mode] == 3 and row.int8_locked[mode] == [3]
    # every model timed at both batch sizes; the table shows one ratio per kind
    sides = {
        f"{k} {side}" for k in ("fp32", "dynamic", "static") for side in ("original", "locked")
    }
    assert set(row.latency) == set(quantization.LATENCY_BATCHES)
    assert all(set(t) == sides and min(t.values()) > 0 for t in row.latency.values())
    table = quantization.latency_table([row]).splitlines()
    assert len(table) == 2 + len(quantization.LATENCY_BATCHES)
    assert all(line.count("**") == 2 * 3 for line in table[2:])
    (excess,) = row.excesses("dynamic")
    assert excess <= quantization.TARGET_POINTS, quantization.markdown_table([row])
    # the static model was calibrated with the key: its key decoder stayed float
    static = tmp_path / f"{task.name}_locked_qc_k0_mixf.static.onnx"
    assert static.exists() and check_key_not_quantized(static) == []
    assert key_nodes(onnx.load(str(tmp_path / f"{task.name}_locked_qc_k0.pre.onnx")).graph)


@pytest.mark.parametrize("reduce_range", [False, True])
def test_reduce_range_reaches_onnxruntime(tmp_path: Path, reduce_range: bool) -> None:
    """``reduce_range`` stores 7-bit weights (|q| ≤ 64), the cure for int8 saturation on x86
    CPUs without VNNI; full range uses ±127."""
    import numpy as np
    import onnx
    import torch
    from onnx import numpy_helper

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    src = tmp_path / "mlp.onnx"
    quantization.export_onnx(model.eval(), [torch.randn(2, 16)], src, with_key=False)
    dst = tmp_path / "mlp.int8.onnx"
    quantization.quantize(
        src, dst, "dynamic", np.zeros((4, 16), np.float32), None, reduce_range=reduce_range
    )
    stored = [
        numpy_helper.to_array(t).astype(int)
        for t in onnx.load(str(dst)).graph.initializer
        if t.name.endswith("_quantized")
    ]
    assert len(stored) == 2
    peak = max(int(np.abs(q).max()) for q in stored)
    assert (peak <= 64) if reduce_range else (peak == 127), peak


def test_weight_count_sees_recurrent_matrices_in_fused_ops_and_in_the_scan(tmp_path: Path) -> None:
    """The int8 count covers an original LSTM's fused-op ``W``/``R`` and the locked cell's
    recurrent matrix inside its ``Scan``; onnxruntime's dynamic quantizer turns the former into
    ``DynamicQuantizeLSTM`` (int8) and leaves the latter float."""
    import numpy as np
    import torch

    from skprotect_pytorch.audit import SUITE

    torch.manual_seed(0)
    model = SUITE["lstm"].factory().eval()
    x = torch.randn(2, 16, 8)
    locked = quantization.lock(model, quantize_compatibility=True, seed=0, name="lstm")
    key = locked.layout.static_key()
    calib = np.zeros((4, 16, 8), np.float32)
    counts = {}
    for side, module, inputs, k in (
        ("original", model, [x], None),
        ("locked", locked.keyed, [x, torch.from_numpy(key)], key),
    ):
        raw = quantization.export_onnx(
            module, inputs, tmp_path / f"{side}.onnx", with_key=k is not None
        )
        pre = quantization.preprocess(raw, tmp_path / f"{side}.pre.onnx")
        weights = quantization.trained_weights(pre)
        q, _ = quantization.quantize(pre, tmp_path / f"{side}.dynamic.onnx", "dynamic", calib, k)
        counts[side] = (len(weights), quantization.quantized_count(q, weights))
    # original: the LSTM's W and R, the head; locked: input projection, recurrent matrix, head
    assert counts == {"original": (3, 3), "locked": (3, 2)}
