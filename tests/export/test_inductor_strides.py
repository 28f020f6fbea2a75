"""AOTInductor packages compile for the strides of the export example: a 1-channel image batch
sliced from a transposed array (strides ``(64, 1, 8, 1)``, contiguous for torch because of its
size-1 axis) made the convolution's output channels_last at export, and the package then
computed garbage for every caller passing row-major inputs of the same values, in any process
but the one that compiled it (the quickstart's model: error 26 on the logits)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from skprotect_pytorch.protect import SkProtectorPyTorch
from skruntime import SkRuntime
from skruntime.backends.inductor import row_major


class OneChannelNet(nn.Module):
    """A conv on 1-channel images with a trained-looking BatchNorm after it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.head = nn.Linear(16 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.conv(x))).flatten(1))


def _sliced_from_transposed(values: np.ndarray) -> torch.Tensor:
    """``values`` (N, 1, 8, 8) as a view whose channel stride is 1, like ``x_test[:2]`` of an
    array built by a transpose."""
    n = values.shape[0]
    view = torch.from_numpy(values.copy()).as_strided((n, 1, 8, 8), (64, 1, 8, 1))
    assert view.stride() == (64, 1, 8, 1) and view.is_contiguous()
    return view


def test_row_major_copies_only_tensors_whose_strides_differ() -> None:
    x = torch.arange(128.0).reshape(2, 1, 8, 8)
    assert row_major(x) is x
    odd = _sliced_from_transposed(x.numpy())
    fixed = row_major(odd)
    assert fixed.stride() == (64, 64, 8, 1) and torch.equal(fixed, x)
    assert row_major(x.to_sparse()).layout == torch.sparse_coo  # left to the input checks


@pytest.mark.slow
def test_a_package_exported_from_a_strided_example_runs_right_in_a_new_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    model = OneChannelNet().eval()
    with torch.no_grad():
        model.bn.running_mean.normal_()
        model.bn.running_var.uniform_(0.5, 2.0)
        model.bn.weight.uniform_(0.5, 2.0)
        model.bn.bias.normal_()
    values = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(values)).numpy()
    monkeypatch.chdir(tmp_path)
    protector = SkProtectorPyTorch(application_name="strides")
    protector.protect_new_model(
        model,
        "net",
        [_sliced_from_transposed(values)],
        model_export_formats=SkProtectorPyTorch.ExportFormat.INDUCTOR_CPU,
        dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},),
    )
    np.save(tmp_path / "x.npy", values)
    np.save(tmp_path / "expected.npy", expected)
    # a new process, as on the device: the compiling process hid the fault
    script = textwrap.dedent(
        """
        import numpy as np
        from skruntime import SkRuntime
        model = SkRuntime("outputs/strides").load("net", "inductor_cpu")
        print(float(np.abs(model(np.load("x.npy")) - np.load("expected.npy")).max()))
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert float(run.stdout.strip().splitlines()[-1]) < 1e-4, run.stdout
    # and here, fed the strided view itself
    model_here = SkRuntime(tmp_path / "outputs" / "strides").load("net", "inductor_cpu")
    got = model_here(_sliced_from_transposed(values))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-4)
