"""A forward() that checks a locked layer's type (``isinstance(self.rnn, nn.LSTM)``) sees
another class, the locked one, and takes another branch: the protector names the layers and
the check, instead of blaming weights read outside forward() or a locked layer's attributes,
and only when answering the original type would have given the original's outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from skprotect_pytorch.errors import UnsupportedLayerError, VerificationError
from skprotect_pytorch.protect import SkProtectorPyTorch

EF = SkProtectorPyTorch.ExportFormat


class _ActivatesLinears(nn.Module):
    """Applies ReLU after a layer only when it is a Linear: the locked 'fc' gets none."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 16)
        self.out = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if isinstance(self.fc, nn.Linear):
            h = torch.relu(h)
        return self.out(h)


class _RecurrentEncoder(nn.Module):
    """Passes (h0, c0) to an LSTM and h0 alone to a GRU, as seq2seq encoders do."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(8, 12, num_layers=2)

    def forward(self, x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor) -> torch.Tensor:
        state = (h0, c0) if isinstance(self.rnn, nn.LSTM) else h0
        return self.rnn(x, state)[0]


class _ReadsWeightAndScansModules(nn.Module):
    """Checks every module's type (looking for dropouts, which changes nothing) and differs
    for another reason: it reads 'fc''s weight directly."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 16)
        self.drop = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = sum(1.0 for m in self.modules() if isinstance(m, nn.Dropout))
        return self.drop(self.fc(x)) * scale + F.linear(x, self.fc.weight.t())


def _protect(model: nn.Module, inputs: list[torch.Tensor]) -> None:
    SkProtectorPyTorch(application_name="app").protect_new_model(
        model, "m", inputs, model_export_formats=EF.ONNX, test_key=True
    )


def test_a_type_check_that_changes_the_outputs_names_the_layer(workdir: Path) -> None:
    """Before: 'The model probably reads a layer's weights outside its forward()'."""
    with pytest.raises(VerificationError, match=r"checks the type of layer\(s\) 'fc'") as err:
        _protect(_ActivatesLinears(), [torch.randn(4, 16)])
    assert "isinstance" in str(err.value)
    assert "name not in {'fc'}" in str(err.value)
    assert not (workdir / "outputs" / "app" / "m").exists()


def test_a_type_check_that_breaks_the_call_names_the_layer(workdir: Path) -> None:
    """Before: 'Its forward() probably uses a locked layer other than by calling it'."""
    inputs = [torch.randn(7, 3, 8), torch.randn(2, 3, 12), torch.randn(2, 3, 12)]
    with pytest.raises(UnsupportedLayerError, match=r"checks the type of layer\(s\) 'rnn'") as e:
        _protect(_RecurrentEncoder(), inputs)
    assert "fails on input_tensors where the original runs (IndexError" in str(e.value)


def test_a_type_check_that_changes_nothing_is_not_blamed(workdir: Path) -> None:
    with pytest.raises(VerificationError) as err:
        _protect(_ReadsWeightAndScansModules(), [torch.randn(4, 16)])
    assert "checks the type" not in str(err.value)
    assert "reads the tensors of layer(s) 'fc'" in str(err.value)


def test_the_layers_keep_their_class_after_the_diagnosis() -> None:
    """The diagnosis gives each layer a recording class for its runs only."""
    from skprotect_pytorch.lock.diagnose import type_checked_layers

    model = nn.Sequential(nn.Linear(4, 4))
    before = type(model[0])
    found = type_checked_layers(model, {"0": nn.Conv2d}, lambda: isinstance(model[0], nn.Conv2d))
    assert found == ["0"]
    assert type(model[0]) is before
    assert not isinstance(model[0], nn.Conv2d)
