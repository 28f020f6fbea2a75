"""Complex outputs are checked whole: the artifact checks cast every output to float64, which
drops a complex output's imaginary part, so a file whose imaginary part was wrong passed with a
max relative error of 0 (until 2026-12-07)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from skprotect_pytorch.errors import VerificationError
from skprotect_pytorch.export import get_exporter
from skprotect_pytorch.export.base import check_outputs
from skprotect_pytorch.protect import SkProtectorPyTorch
from skruntime.runtime import SkRuntime

EF = SkProtectorPyTorch.ExportFormat
EXPECTED = (np.arange(1, 7) + 1j * np.arange(1, 7)).astype(np.complex64)


def check(tmp_path: Path, actual: np.ndarray) -> float:
    run = lambda _: [actual]  # noqa: E731
    return check_outputs(get_exporter(EF.TORCHSCRIPT_CPU), tmp_path / "m.pt", run, [], [EXPECTED])


def test_a_wrong_imaginary_part_is_refused(tmp_path: Path) -> None:
    wrong = (EXPECTED.real + 1j * np.full(6, 100.0)).astype(np.complex64)
    with pytest.raises(VerificationError, match=r"max relative error 11\.7 > tolerance"):
        check(tmp_path, wrong)


def test_a_complex_output_within_the_tolerance_passes(tmp_path: Path) -> None:
    close = (EXPECTED + 1e-6j).astype(np.complex64)
    assert 0 < check(tmp_path, close) < 1e-4


class Spectrum(nn.Module):
    """A Linear layer, then the real FFT of its output: a complex output."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fft.rfft(self.fc(x), dim=-1)


def test_a_model_with_a_complex_output_protects_and_runs(workdir: Path) -> None:
    torch.manual_seed(0)
    model, x = Spectrum().eval(), torch.randn(2, 8)
    protector = SkProtectorPyTorch(application_name="app")
    protector.protect_new_model(model, "m", [x], model_export_formats=EF.TORCHSCRIPT_CPU)
    with torch.no_grad():
        expected = model(x).numpy()
    with SkRuntime(protector.outputs_dir, platform="TXT").load("m", "torchscript_cpu") as loaded:
        got = np.asarray(loaded(x.numpy()))
    assert got.dtype == np.complex64
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
