"""ONNX files over protobuf's 2 GiB: refused before the export, not after it.

An ONNX file is one protobuf message, which onnxruntime cannot parse beyond 2 GiB. A model of
2.25 GiB (nine ``Linear(8192, 8192)``) was locked (44 s), exported (16 s) and written as one
2.26 GB file, then failed its check after 69 s and 8.7 GB of memory with "VerificationError: The
ONNX artifact ... could not be loaded (InvalidProtobuf: ... Protobuf parsing failed.). Check the
export log; re-export the model.", which no re-export fixes. The limit is
``onnx.MAX_ONNX_BYTES``, made small here so that no test allocates 2 GiB."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from tests.export.toy_models import Toy

from skprotect_pytorch import pipeline
from skprotect_pytorch.errors import ExportError
from skprotect_pytorch.export import build_export_options, get_exporter
from skprotect_pytorch.export import onnx as onnx_export
from skprotect_pytorch.formats import ExportFormat
from skprotect_pytorch.protect import SkProtectorPyTorch

EXPORTER = get_exporter(ExportFormat.ONNX)
OPTIONS = build_export_options([torch.randn(2, 8)], {"input_names": ["x"], "output_names": ["y"]})
WEIGHTS = (8 * 3 + 3) * 4  # Toy's Linear(8, 3) in float32


def _no_export(*_args: object, **_kwargs: object) -> None:
    raise AssertionError("work began on a model over the ONNX size limit")


def _export_toy(folder: Path) -> None:
    """Export :class:`Toy` with a key to ``folder / "m.onnx"``."""
    EXPORTER.export(
        Toy().eval(), (torch.randn(2, 8), torch.rand(10)), folder / "m.onnx", OPTIONS, with_key=True
    )


def test_weights_over_the_limit_are_refused_before_the_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(onnx_export, "MAX_ONNX_BYTES", WEIGHTS - 1)
    monkeypatch.setattr(onnx_export, "_torch_onnx_export", _no_export)
    start = time.perf_counter()
    with pytest.raises(ExportError) as info:
        _export_toy(tmp_path)
    assert time.perf_counter() - start < 1
    assert list(tmp_path.iterdir()) == []
    message = str(info.value)
    assert message.startswith(
        f"The locked model cannot be exported to ONNX: its weights are 0.00 GiB ({WEIGHTS:,} "
        f"bytes), and one ONNX file holds at most 0.00 GiB ({WEIGHTS - 1:,} bytes) (protobuf's "
        "limit, which onnxruntime cannot load beyond). Leave ExportFormat.ONNX out of "
        "model_export_formats and protect this model to TORCHSCRIPT_CPU / TORCHSCRIPT_GPU or "
        "INDUCTOR_CPU / INDUCTOR_GPU"
    )
    assert "the signed configuration hashes one model file" in message


def test_shared_weights_count_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tied weight is one initializer: a model is not refused for counting it twice."""
    model = Toy().eval()
    model.tied = model.lin  # the same Linear under a second name
    monkeypatch.setattr(onnx_export, "MAX_ONNX_BYTES", WEIGHTS + 10_000)
    report = EXPORTER.export(
        model, (torch.randn(2, 8), torch.rand(10)), tmp_path / "m.onnx", OPTIONS, with_key=True
    )
    assert report.path.stat().st_size <= WEIGHTS + 10_000


def test_a_written_file_over_the_limit_is_removed_and_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Weights within the limit, the file (graph, names, constants) over it."""
    monkeypatch.setattr(onnx_export, "MAX_ONNX_BYTES", WEIGHTS)
    with pytest.raises(ExportError, match=r"^The ONNX file is 0\.00 GiB \(\d[\d,]* bytes\), over"):
        _export_toy(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_protection_to_onnx_of_a_model_over_the_limit_leaves_nothing(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused before the model is copied and locked (44 s for 2.25 GiB)."""
    monkeypatch.setattr(onnx_export, "MAX_ONNX_BYTES", 100)
    monkeypatch.setattr(pipeline, "copy_model", _no_export)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    protector = SkProtectorPyTorch(application_name="app")
    with pytest.raises(ExportError, match=r"^The model 'big' cannot be exported to ONNX: its weig"):
        protector.protect_new_model(
            model.eval(), "big", [torch.randn(1, 8)], model_export_formats=ExportFormat.ONNX
        )
    assert not list((workdir / "outputs" / "app").glob("**/*.onnx"))
