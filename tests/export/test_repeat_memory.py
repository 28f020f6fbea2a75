"""Repeated protections in one process: an export must not keep the locked weights alive."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from skprotect_pytorch.errors import ExportError
from skprotect_pytorch.export import ExportReport, build_export_options, get_exporter
from skprotect_pytorch.formats import ExportFormat
from skprotect_pytorch.lock import lock_model


def _export_and_release(fmt: ExportFormat, path: Path) -> ExportReport:
    """Export a locked MLP to ``fmt`` at ``path``, drop it, and check that none of its
    parameters is still alive; the artifact is checked to run with the key."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    x = torch.randn(2, 16)
    locked = lock_model(model, layer_filter=lambda n, m: True, secret_rng=np.random.default_rng(0))
    keyed, key = locked.keyed, torch.from_numpy(locked.layout.static_key())
    del locked
    weights = [weakref.ref(p) for p in keyed.parameters()]
    assert weights
    opts = build_export_options([x], {"input_names": ["x"], "output_names": ["y"]})
    exporter = get_exporter(fmt)
    report = exporter.export(keyed, (x, key), path, opts, with_key=True)
    del keyed
    gc.collect()
    assert [ref for ref in weights if ref() is not None] == []
    run = exporter.load(report.path, opts)
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(run([x.numpy(), key.numpy()])[0], expected, rtol=1e-4, atol=1e-5)
    return report


def test_torchscript_export_releases_the_locked_weights(tmp_path):
    """``torch.jit.freeze`` of a traced module put its weights, as graph constants, in
    TorchScript's global compilation unit: every protection kept its locked model's tensors
    for the rest of the process (+50 MiB a run for a 50 MB model)."""
    report = _export_and_release(ExportFormat.TORCHSCRIPT_CPU, tmp_path / "m.pt")
    # still the frozen, optimised graph
    assert report.exporter == "torch.jit trace+freeze+optimize_for_inference (cpu)"


@pytest.mark.slow
def test_inductor_export_releases_the_locked_weights(tmp_path):
    """torch's map of the last trace's fake tensors to graph nodes held the compiled graph
    module, and the locked weights with it, until the next export in the process."""
    _export_and_release(ExportFormat.INDUCTOR_CPU, tmp_path / "m.pt2")


def test_a_torchscript_scratch_file_that_cannot_be_written_is_an_export_error(
    tmp_path: Path, monkeypatch
) -> None:
    """torch's archive writer reports a full disk as a RuntimeError ("file write failed"):
    saving the traced model to its scratch file says where and what to do, and leaves no
    scratch file behind."""
    real_save = torch.jit.save

    def full_disk(module, f, *args, **kwargs):
        if str(getattr(f, "name", f)).endswith(".traced"):  # a path or a file
            raise RuntimeError("[enforce fail at inline_container.cc:778] . file write failed")
        return real_save(module, f, *args, **kwargs)

    monkeypatch.setattr(torch.jit, "save", full_disk)
    model = nn.Sequential(nn.Linear(16, 4)).eval()
    x = torch.randn(2, 16)
    opts = build_export_options([x], {"input_names": ["x"], "output_names": ["y"]})
    exporter = get_exporter(ExportFormat.TORCHSCRIPT_CPU)
    path = tmp_path / "m.pt"
    with pytest.raises(ExportError, match=r"could not save the traced model to .*m\.pt\.traced"):
        exporter.export(model, (x,), path, opts, with_key=False)
    assert list(tmp_path.iterdir()) == []
