"""Protections under ``torch.inference_mode()``: the checked eager run that records
which inputs forward changes in place, the last group's in-place lock."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tests.export.toy_models import DoublesInPlace

from skprotect_pytorch.export.base import mutated_inputs
from skprotect_pytorch.protect import SkProtectorPyTorch

EF = SkProtectorPyTorch.ExportFormat


def test_input_mutation_is_found_under_inference_mode() -> None:
    """Tensors made under torch.inference_mode() have no version counter: reading it raised
    "Inference tensors do not track version counter"."""
    with torch.inference_mode():
        assert mutated_inputs(DoublesInPlace().eval(), [torch.randn(2, 3)]) == [0]


@pytest.mark.parametrize("formats", [EF.ONNX, EF.TORCHSCRIPT_CPU])
def test_a_protection_runs_under_inference_mode(workdir: Path, formats: EF) -> None:
    """A protection called inside ``with torch.inference_mode():`` (an ONNX one worked before
    the checked run recorded input mutation, then failed with torch's RuntimeError); the
    TorchScript artifact still copies the input its forward changes."""
    torch.manual_seed(0)
    model = DoublesInPlace().eval()
    with torch.inference_mode():
        result = SkProtectorPyTorch(application_name="app").protect_new_model(
            model, "net", [torch.randn(2, 3)], model_export_formats=formats, test_key=True
        )
    (entry,) = result.formats.values()
    if formats is EF.TORCHSCRIPT_CPU:
        key_file = entry.path.parent / "key_vector_inv_net.txt"
        key = torch.tensor([float(v) for v in key_file.read_text().split()])
        x = torch.ones(2, 3)
        with torch.no_grad():
            torch.jit.load(str(entry.path))(x, key)
        assert torch.equal(x, torch.ones(2, 3))  # the caller's input, as it was
