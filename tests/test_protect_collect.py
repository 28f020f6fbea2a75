"""The locked model is freed after its exports by a full garbage collection (its modules refer
to each other) only when it is large: the collection cost 0.2 s and more in a process of many
objects, a large share of a small model's protection, at every format group."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import pytest
import torch
from torch import nn

import skprotect_pytorch.pipeline as pipeline
from skprotect_pytorch.protect import SkProtectorPyTorch


def locked_weights_alive_at_the_check(monkeypatch: pytest.MonkeyPatch, collect_from: int) -> int:
    """With ``COLLECT_FROM_BYTES`` at ``collect_from`` and automatic collection off, how many of
    the locked model's weight matrices are alive when its ONNX file is checked."""
    weights: list[weakref.ref] = []
    alive: list[int] = []

    def lock_model(*args, **kwargs):
        locked = real_lock(*args, **kwargs)
        weights.extend(weakref.ref(p) for p in locked.keyed.parameters() if p.dim() > 1)
        return locked

    def load_artifact(*args, **kwargs):
        alive.append(sum(w() is not None for w in weights))
        return real_load(*args, **kwargs)

    real_lock, real_load = pipeline.lock_model, pipeline.load_artifact
    monkeypatch.setattr(pipeline, "lock_model", lock_model)
    monkeypatch.setattr(pipeline, "load_artifact", load_artifact)
    monkeypatch.setattr(pipeline, "COLLECT_FROM_BYTES", collect_from)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
    gc.disable()
    try:
        SkProtectorPyTorch(application_name="app").protect_new_model(
            model,
            "net",
            [torch.randn(2, 6)],
            model_export_formats=SkProtectorPyTorch.ExportFormat.ONNX,
        )
    finally:
        gc.enable()
    assert len(weights) == 2 and len(alive) == 1
    return alive[0]


def test_a_model_from_the_threshold_is_collected_before_its_check(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert locked_weights_alive_at_the_check(monkeypatch, 0) == 0


def test_a_smaller_model_is_left_to_the_collectors_pace(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert locked_weights_alive_at_the_check(monkeypatch, 2**40) == 2


def test_smaller_models_left_uncollected_add_up_to_the_threshold(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The collector's own full collections are rare in a process that imported torch: a model
    just under the threshold, each left to them, stayed alive through the next protections (a
    63 MiB MLP protected 3 times: 3 locked models alive at the last check). Two under the
    threshold, together over it, are collected."""
    weights: list[list[weakref.ref]] = []
    alive: list[int] = []

    def lock_model(*args, **kwargs):
        locked = real_lock(*args, **kwargs)
        if not weights:  # the threshold: one and a half locked models
            size = sum(t.numel() * t.element_size() for t in locked.keyed.state_dict().values())
            monkeypatch.setattr(pipeline, "COLLECT_FROM_BYTES", size * 3 // 2)
        weights.append([weakref.ref(p) for p in locked.keyed.parameters() if p.dim() > 1])
        return locked

    def load_artifact(*args, **kwargs):
        alive.append(sum(w() is not None for run in weights for w in run))
        return real_load(*args, **kwargs)

    real_lock, real_load = pipeline.lock_model, pipeline.load_artifact
    monkeypatch.setattr(pipeline, "lock_model", lock_model)
    monkeypatch.setattr(pipeline, "load_artifact", load_artifact)
    monkeypatch.setattr(pipeline, "_uncollected_bytes", 0, raising=False)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
    gc.disable()
    try:
        for name in ("first", "second"):
            SkProtectorPyTorch(application_name="app").protect_new_model(
                model,
                name,
                [torch.randn(2, 6)],
                model_export_formats=SkProtectorPyTorch.ExportFormat.ONNX,
            )
    finally:
        gc.enable()
    assert alive == [2, 0]  # the first left to the collector, both collected at the second
