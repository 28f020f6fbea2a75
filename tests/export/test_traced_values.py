"""A traced export never bakes a value of the example inputs into the artifact silently.

``torch.jit.trace`` (TorchScript, the legacy ONNX exporter) turns ``if x.mean() > 0:`` or
``int(x.shape[0])`` into the constant it was for the example; the dynamo ONNX exporter fixes a
dynamic axis that ``forward`` specialises. Either artifact passed the check on the example
inputs and was wrong on others; now the export fails and says where and what to do.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.export import Dim

from skprotect_pytorch.errors import ExportError
from skprotect_pytorch.export import build_export_options, get_exporter
from skprotect_pytorch.formats import ExportFormat
from skprotect_pytorch.protect import SkProtectorPyTorch

HERE = Path(__file__).name


class Branchy(nn.Module):
    """Takes one of two paths by the sign of the input's mean (a value, not a size)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.mean() > 0:
            return self.fc(x)
        return -3 * self.fc(x)


class BatchScaled(nn.Module):
    """Multiplies by the batch size read as a Python int."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * int(x.shape[0])


class SizeReshaped(nn.Module):
    """Reads a size with ``x.size(0)`` only: traced as a size, nothing to refuse."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x).reshape(x.size(0), 2, 2)


def _export(fmt: ExportFormat, model: nn.Module, path: Path, onnx_params=None, dynamic=None):
    x = torch.rand(3, 8) + 0.1  # mean > 0: the branch the trace would keep
    options = build_export_options(
        [x], {"input_names": ["x"], "output_names": ["y"], **(onnx_params or {})}, dynamic
    )
    return get_exporter(fmt).export(model.eval(), (x,), path, options, with_key=False)


@pytest.mark.parametrize(
    ("fmt", "onnx_params", "exporter"),
    [
        (ExportFormat.TORCHSCRIPT_CPU, None, "ExportFormat.TORCHSCRIPT_CPU traces"),
        (ExportFormat.ONNX, None, "The legacy ONNX exporter"),  # dynamo fails, legacy traces
        (ExportFormat.ONNX, {"dynamo": False}, "The legacy ONNX exporter"),
    ],
    ids=["torchscript", "onnx-fallback", "onnx-legacy"],
)
def test_a_branch_on_a_tensor_value_is_refused_with_where_it_is(
    fmt: ExportFormat, onnx_params, exporter: str, tmp_path: Path
) -> None:
    path = tmp_path / f"m{get_exporter(fmt).extension}"
    with pytest.raises(ExportError) as caught:
        _export(fmt, Branchy(), path, onnx_params)
    message = str(caught.value)
    assert message.startswith(exporter)
    assert f"{HERE}:" in message and "Python boolean" in message
    assert "torch.where" in message  # what to do
    assert not path.exists()


def test_a_python_int_of_a_dynamic_size_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="Python integer"):
        _export(ExportFormat.TORCHSCRIPT_CPU, BatchScaled(), tmp_path / "m.pt")


def test_onnx_refuses_a_dynamic_axis_that_dynamo_fixed(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"fixed dynamic axes .*\(x\[0\] = 3\)"):
        _export(
            ExportFormat.ONNX,
            BatchScaled(),
            tmp_path / "m.onnx",
            {"dynamo": True},
            ({0: Dim("batch", min=1, max=8)},),
        )


@pytest.mark.parametrize("fmt", [ExportFormat.TORCHSCRIPT_CPU, ExportFormat.ONNX])
def test_sizes_read_as_sizes_still_export(fmt: ExportFormat, tmp_path: Path) -> None:
    path = tmp_path / f"m{get_exporter(fmt).extension}"
    report = _export(fmt, SizeReshaped(), path, dynamic=({0: Dim("batch", min=1, max=8)},))
    assert report.path.exists()


def test_protect_refuses_the_branchy_model_before_writing(tmp_path: Path) -> None:
    previous = Path.cwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(ExportError, match="turns a tensor into a Python value"):
            SkProtectorPyTorch(application_name="r1").protect_new_model(
                Branchy().eval(),
                "branchy",
                [torch.rand(2, 8) + 0.1],
                model_export_formats=SkProtectorPyTorch.ExportFormat.TORCHSCRIPT_CPU,
                test_key=True,
            )
    finally:
        os.chdir(previous)
    assert not list((tmp_path / "outputs" / "r1").glob("branchy/**/*.pt"))


class UnlockedAttention(nn.Module):
    """An attention the lock leaves as it is (``layer_filter`` excludes it), then a Linear."""

    def __init__(self, need_weights: bool) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.fc = nn.Linear(8, 8)
        self.need_weights = need_weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.attn(x, x, x, need_weights=self.need_weights)[0])


@pytest.mark.parametrize("need_weights", [True, False])
def test_an_attention_left_unlocked_exports_to_torchscript(
    need_weights: bool, workdir: Path
) -> None:
    """torch's own size checks in MultiheadAttention (and its head size read as a float) made
    TorchScript refuse every model with an attention the lock leaves as it is, though api.md
    says such layers stay in the artifacts unlocked (until 2026-12-07)."""
    from skruntime import SkRuntime

    torch.manual_seed(0)
    model = UnlockedAttention(need_weights).eval()
    result = SkProtectorPyTorch(application_name="app").protect_new_model(
        model,
        "net",
        [torch.randn(2, 5, 8)],
        model_export_formats=SkProtectorPyTorch.ExportFormat.TORCHSCRIPT_CPU,
        test_key=True,
        layer_filter=lambda name, _module: name != "attn",
        dynamic_shapes=({0: Dim("batch", min=1, max=8)},),
    )
    assert result.formats["torchscript_cpu"].max_rel_error < 1e-4
    x = torch.randn(3, 5, 8)
    with SkRuntime("outputs/app").load("net", "torchscript_cpu", static_key=True) as loaded:
        out = loaded(x.numpy())
    assert torch.allclose(torch.as_tensor(out), model(x), rtol=1e-4, atol=1e-5)
