"""A traced export keeps refusing a value of the example inputs that forward() computes with,
but not a condition that only guards an error (an ``assert``, an ``if`` that only raises or
warns): the trace passed the check, and the artifact only skips it. torch's own input checks
are such conditions: GroupNorm, InstanceNorm, BatchNorm without running stats,
``ConvTranspose2d(x, output_size=...)`` and ``nn.Transformer`` could not be protected for
TorchScript (nor the legacy ONNX exporter) before."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.assertions import assert_equivalent
from torch import nn

from skprotect_pytorch.errors import ExportError
from skprotect_pytorch.protect import SkProtectorPyTorch

EF = SkProtectorPyTorch.ExportFormat


class _UpsampleTo(nn.Module):
    """A U-Net step: upsample to the skip connection's size."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(4, 4, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.up(x, output_size=skip.shape[-2:]) + skip


class _Checked(nn.Module):
    """Checks its input in user code, assert and if-raise, then computes without the value."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[1] == 8, "8 features"
        if torch.isnan(x).any():
            raise ValueError("NaN input")
        return self.fc(x)


class _ChecksThenBranches(nn.Module):
    """An if that raises in one branch and computes in the other is still a branch."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.mean() > 10:
            raise ValueError("too large")
        elif x.mean() > 0:
            return self.fc(x)
        return -self.fc(x)


class _CatchesItsCheck(nn.Module):
    """A raise caught around it is a branch: the except computes otherwise."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        try:
            if x.mean() > 0:
                raise ValueError("positive")
            return self.fc(x)
        except ValueError:
            return -self.fc(x)


def _norms() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.InstanceNorm2d(8, affine=True),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3),
        nn.GroupNorm(2, 8),
        nn.BatchNorm2d(8, track_running_stats=False),
        nn.Conv2d(8, 4, 1),
    )


class _Seq2Seq(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.t = nn.Transformer(16, 4, 1, 1, 32, batch_first=True)

    def forward(self, src: torch.Tensor, tgt: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.t(src, tgt, tgt_mask=mask, tgt_is_causal=True)


CASES = {
    "norms": (_norms, [torch.randn(2, 3, 10, 10)]),
    "convtranspose_output_size": (
        _UpsampleTo,
        [torch.randn(2, 4, 5, 5), torch.randn(2, 4, 10, 10)],
    ),
    "transformer": (
        _Seq2Seq,
        [
            torch.randn(2, 6, 16),
            torch.randn(2, 5, 16),
            nn.Transformer.generate_square_subsequent_mask(5),
        ],
    ),
    "user_checks": (_Checked, [torch.randn(3, 8)]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_condition_that_only_guards_an_error_is_traced(case: str, workdir: Path) -> None:
    """Before: ExportError "its forward() turns a tensor into a Python value at
    torch/nn/functional.py:2853" (GroupNorm), instancenorm.py:116, conv.py:818,
    transformer.py:273."""
    make, inputs = CASES[case]
    torch.manual_seed(0)
    model = make().eval()
    result = SkProtectorPyTorch(application_name="app").protect_new_model(
        model, "m", inputs, model_export_formats=EF.TORCHSCRIPT_CPU, test_key=True
    )
    path = result.formats["torchscript_cpu"].path
    key = torch.from_numpy(np.loadtxt(path.parent / "key_vector_inv_m.txt", dtype=np.float32))
    loaded = torch.jit.load(str(path))
    fresh = [t if t.dim() == 2 and case == "transformer" else torch.randn_like(t) for t in inputs]
    with torch.no_grad():
        assert_equivalent(loaded(*fresh, key), copy.deepcopy(model)(*fresh))


@pytest.mark.parametrize("model", [_ChecksThenBranches, _CatchesItsCheck])
def test_a_branch_beside_a_raise_is_still_refused(model: type[nn.Module], workdir: Path) -> None:
    with pytest.raises(ExportError, match="turns a tensor into a Python value"):
        SkProtectorPyTorch(application_name="app").protect_new_model(
            model(), "m", [torch.randn(3, 8)], model_export_formats=EF.TORCHSCRIPT_CPU
        )
