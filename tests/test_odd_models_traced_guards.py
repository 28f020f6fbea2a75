"""A traced export keeps refusing a value of the example inputs that forward() turns into a
Python value, but not torch's own input checks of GroupNorm, InstanceNorm, BatchNorm without
running statistics and nn.Transformer, which only decide whether to raise for an input the
trace passed: until 2026-12-07 every model with one was refused in TorchScript (and the ONNX
fallback), told to rewrite torch's code. Other lines of torch's (ConvTranspose2d's
``output_size``, whose output padding is a value too) are still refused, saying to use the
torch.export-based formats; so are conditions in the user's own code, even ones that only
guard a raise (an error caught in a caller, a walrus, a StopIteration would change outputs)."""

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


def _norms_plain() -> nn.Module:
    """InstanceNorm without affine warns (does not raise) on a size mismatch: also a guard."""
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.InstanceNorm2d(8), nn.Conv2d(8, 4, 1))


CASES = {
    "norms": (_norms, [torch.randn(2, 3, 10, 10)]),
    "instancenorm_without_affine": (_norms_plain, [torch.randn(2, 3, 10, 10)]),
    "transformer": (
        _Seq2Seq,
        [
            torch.randn(2, 6, 16),
            torch.randn(2, 5, 16),
            nn.Transformer.generate_square_subsequent_mask(5),
        ],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_torchs_own_input_checks_are_traced(case: str, workdir: Path) -> None:
    """Before: ExportError "its forward() turns a tensor into a Python value at
    torch/nn/functional.py:2853" (GroupNorm), instancenorm.py:116, transformer.py:273."""
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


@pytest.mark.parametrize("model", [_Checked, _ChecksThenBranches, _CatchesItsCheck])
def test_a_condition_in_the_users_code_is_still_refused(
    model: type[nn.Module], workdir: Path
) -> None:
    with pytest.raises(ExportError, match="turns a tensor into a Python value") as refused:
        SkProtectorPyTorch(application_name="app").protect_new_model(
            model(), "m", [torch.randn(3, 8)], model_export_formats=EF.TORCHSCRIPT_CPU
        )
    assert "Compute it with tensor ops instead" in str(refused.value)


def test_another_line_of_torchs_is_refused_saying_which_formats_trace_it(workdir: Path) -> None:
    """ConvTranspose2d(x, output_size=...) computes its output padding from the sizes: a value
    the trace would keep, not a guard. The advice was to rewrite torch's own code."""
    inputs = [torch.randn(2, 4, 5, 5), torch.randn(2, 4, 10, 10)]
    with pytest.raises(ExportError, match=r"conv\.py:\d+") as refused:
        SkProtectorPyTorch(application_name="app").protect_new_model(
            _UpsampleTo(), "m", inputs, model_export_formats=EF.TORCHSCRIPT_CPU
        )
    assert "torch's own code" in str(refused.value) and "INDUCTOR_CPU" in str(refused.value)


def test_the_onnx_fallbacks_refusal_of_torchs_line_names_the_dynamo_exporter(
    workdir: Path,
) -> None:
    """The legacy ONNX exporter refused ConvTranspose2d's output_size with the TorchScript
    advice: leave TORCHSCRIPT_CPU/TORCHSCRIPT_GPU out and use ONNX, the format it was. The
    dynamo exporter it now names exports the model."""
    inputs = [torch.randn(2, 4, 5, 5), torch.randn(2, 4, 10, 10)]
    params = {"input_names": ["x", "skip"]}
    protector = SkProtectorPyTorch(application_name="app")
    with pytest.raises(ExportError, match=r"conv\.py:\d+") as refused:
        protector.protect_new_model(
            _UpsampleTo(), "m", inputs, model_export_formats=EF.ONNX,
            onnx_params={**params, "dynamo": False},
        )  # fmt: skip
    message = str(refused.value)
    assert "TORCHSCRIPT" not in message
    assert "export ONNX with the dynamo exporter" in message and "INDUCTOR_CPU" in message
    result = protector.protect_new_model(
        _UpsampleTo(), "m", inputs, model_export_formats=EF.ONNX, onnx_params=params
    )
    assert list(result.formats) == ["onnx"]
