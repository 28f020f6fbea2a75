"""ConvTranspose1d/2d with an ``output_padding`` of ``stride`` or more (torch allows up to
``max(stride, dilation) - 1``): onnxruntime's ConvTranspose refuses it, so the protected ONNX
file could not run ("output_padding may be too large for stride") and the protection failed
with a VerificationError. The locked layer computes it as a full transposed conv, cropped."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from tests.assertions import assert_equivalent, assert_garbage
from torch import nn

from skprotect_pytorch.lock import lock_model
from skprotect_pytorch.protect import SkProtectorPyTorch

EF = SkProtectorPyTorch.ExportFormat


def _static_key(folder: Path, name: str = "net") -> np.ndarray:
    text = (folder / f"key_vector_inv_{name}.txt").read_text().split()
    return np.array([np.float32(v) for v in text], dtype=np.float32)


class TwoTransposed(nn.Module):
    """A 1-D and a 2-D transposed conv, each with output_padding >= stride on some axis; one
    where the padding covers the output padding, one where the output reaches past the full
    transposed output (zeros plus bias there)."""

    def __init__(self) -> None:
        super().__init__()
        self.up1 = nn.ConvTranspose1d(4, 6, 3, stride=1, dilation=2, output_padding=1)
        self.up2 = nn.ConvTranspose2d(
            6, 8, (3, 2), stride=(1, 2), padding=(2, 0), dilation=(3, 1),
            output_padding=(2, 1), groups=2,
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up2(torch.relu(self.up1(x)).unsqueeze(-1).expand(-1, -1, -1, 3))


def test_protected_onnx_runs_and_matches(workdir: Path) -> None:
    torch.manual_seed(0)
    model, x = TwoTransposed().eval(), torch.randn(2, 4, 7)
    with torch.no_grad():
        ref = model(x)
    result = SkProtectorPyTorch(application_name="app").protect_new_model(
        model, "net", [x], model_export_formats=EF.ONNX, test_key=True
    )
    assert [d.name for d in result.locked_layers] == ["up1", "up2"]
    folder = workdir / "outputs/app/net/onnx"
    session = ort.InferenceSession(str(folder / "net.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    key = _static_key(folder)
    assert_equivalent(session.run(None, {names[0]: x.numpy(), names[1]: key})[0], ref)
    wrong = np.random.default_rng(1).random(key.shape).astype(np.float32) * 4
    assert_garbage(session.run(None, {names[0]: x.numpy(), names[1]: wrong})[0], ref)


def _grid():
    for dims, stride, dilation, padding, bias, batched in itertools.product(
        (1, 2), (1, 2), (2, 3), (0, 1, 3), (True, False), (True, False)
    ):
        for op in range(stride, max(stride, dilation)):
            yield dims, stride, dilation, padding, op, bias, batched


@pytest.mark.parametrize("dims,stride,dilation,padding,op,bias,batched", list(_grid()))
def test_locked_layer_is_exact_for_every_output_padding_past_stride(
    dims, stride, dilation, padding, op, bias, batched
) -> None:
    torch.manual_seed(0)
    cls = nn.ConvTranspose1d if dims == 1 else nn.ConvTranspose2d
    model = cls(4, 6, 3, stride, padding, op, 2, bias, dilation).eval()
    x = torch.randn(*((2,) if batched else ()), 4, *(5,) * dims)
    locked = lock_model(model, layer_filter=lambda n, m: True, secret_rng=np.random.default_rng(0))
    assert locked.keyed.model.crops_output
    with torch.no_grad():
        out = locked.keyed(x, torch.from_numpy(locked.layout.static_key()))
    assert_equivalent(out, model(x).detach())


class WithOutputSize(nn.Module):
    def __init__(self, layer: nn.Module, size: list[int]) -> None:
        super().__init__()
        self.layer = layer
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x, output_size=self.size)


def test_a_call_with_output_size_still_takes_torchs_own_path() -> None:
    """``output_size`` sets the output padding at the call (always below the stride)."""
    torch.manual_seed(0)
    layer = nn.ConvTranspose1d(4, 6, 3, stride=2, dilation=3, output_padding=2)
    model, x = WithOutputSize(layer, [17]).eval(), torch.randn(2, 4, 6)
    locked = lock_model(model, layer_filter=lambda n, m: True, secret_rng=np.random.default_rng(0))
    with torch.no_grad():
        ref = model(x)
        out = locked.keyed(x, torch.from_numpy(locked.layout.static_key()))
    assert ref.shape[-1] == 17
    assert_equivalent(out, ref)
