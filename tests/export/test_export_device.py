"""The torch exporters copy a model only when it is not on their device yet.

The protector hands the GPU exporters its locked model already on the GPU; ``prepare`` deep-
copied it all the same, so each GPU export held the model twice in GPU memory."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from skprotect_pytorch.export import build_export_options, get_exporter
from skprotect_pytorch.export.base import on_device
from skprotect_pytorch.formats import ExportFormat


def test_a_module_on_the_device_is_not_copied():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    assert on_device(model, "cpu") is model
    moved = on_device(model, "meta")
    assert moved is not model
    assert {t.device.type for t in (*moved.parameters(), *moved.buffers())} == {"meta"}
    assert {t.device.type for t in (*model.parameters(), *model.buffers())} == {"cpu"}


def test_prepare_exports_the_callers_module_on_its_device(tmp_path: Path):
    model = nn.Linear(4, 2)
    x = torch.randn(2, 4)
    exporter = get_exporter(ExportFormat.TORCHSCRIPT_CPU)
    opts = build_export_options([x], {"input_names": ["x"]})
    module, args, _, notes = exporter.prepare(model, (x,), tmp_path / "m.pt", opts, False)
    assert module is model and args[0] is x and notes == []
