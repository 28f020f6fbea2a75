"""A model on the ``meta`` device (built under ``torch.device("meta")``, its weights never
loaded) has shapes but no values: it is refused before any work, naming the tensors and how
to load the weights, not with torch's device mismatch on the example inputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from skprotect_pytorch.errors import InvalidArgumentError
from skprotect_pytorch.protect import SkProtectorPyTorch

EF = SkProtectorPyTorch.ExportFormat


def _on_meta() -> nn.Module:
    with torch.device("meta"):
        return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_a_model_on_meta_is_refused_before_any_work(device: str, workdir: Path) -> None:
    """Before: "The model fails on input_tensors ...: Tensor on device meta is not on the
    expected device cpu!", whose advice (the device it expects) led to meta inputs."""
    with pytest.raises(InvalidArgumentError, match="on the 'meta' device") as err:
        SkProtectorPyTorch(application_name="app").protect_new_model(
            _on_meta(), "m", [torch.randn(4, 16, device=device)], model_export_formats=EF.ONNX
        )
    assert "0.weight, 0.bias, 2.weight, 2.bias" in str(err.value)
    assert "load_state_dict" in str(err.value)
    assert not (workdir / "outputs").exists()


def test_the_suggested_loading_protects(workdir: Path) -> None:
    trained = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    model = _on_meta()
    model.load_state_dict(trained.state_dict(), assign=True)
    result = SkProtectorPyTorch(application_name="app").protect_new_model(
        model, "m", [torch.randn(4, 16)], model_export_formats=EF.ONNX
    )
    assert [d.name for d in result.layers if d.locked] == ["0", "2"]
