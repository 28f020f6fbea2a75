"""A range declared in ``dynamic_shapes`` reaches every protected file, and the runtime keeps
calls inside it: ``Dim("batch", min=2, max=8)`` runs batches 2 to 8 and refuses 1 and 9+.

Before, the runtime never learnt the range: every format ran a batch of 1 or 100 unchecked,
although the model was exported and checked for 2 to 8 only (and an AOTInductor package's
compiled code may rely on the range; it checks nothing itself)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from skprotect_pytorch.formats import ExportFormat as EF
from skprotect_pytorch.protect import SkProtectorPyTorch
from skruntime import InputError, SkRuntime
from skruntime.backends.inputs import INPUTS_METADATA

BATCH = ({0: torch.export.Dim("batch", min=2, max=8)},)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def protected(root: Path, formats: EF) -> tuple[nn.Module, Path]:
    torch.manual_seed(0)
    model = Net().eval()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("SKPROTECT_STATE_DIR", raising=False)
        SkProtectorPyTorch(application_name="app").protect_new_model(
            model, "net", [torch.randn(4, 3, 6, 6)], model_export_formats=formats,
            dynamic_shapes=BATCH,
        )  # fmt: skip
    return model, root / "outputs/app"


def recorded(path: Path) -> list[dict]:
    """The ``skprotect.inputs`` specs a protected file carries."""
    if path.suffix == ".onnx":
        props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
        return json.loads(props[INPUTS_METADATA])
    if path.suffix == ".pt2":
        return json.loads(
            torch._inductor.aoti_load_package(str(path)).get_metadata()[INPUTS_METADATA]
        )
    with zipfile.ZipFile(path) as z:
        member = next(n for n in z.namelist() if n.endswith(INPUTS_METADATA))
        return json.loads(z.read(member))


def check_format(model: nn.Module, outputs: Path, fmt: str, file: str) -> None:
    assert recorded(outputs / "net" / file)[0]["ranges"] == {"0": [2, 8]}
    with SkRuntime(outputs).load("net", fmt) as loaded:
        for n in (2, 8):
            x = torch.randn(n, 3, 6, 6)
            with torch.no_grad():
                expected = model(x).numpy()
            np.testing.assert_allclose(loaded(x.numpy()), expected, rtol=1e-4, atol=1e-5)
        for n, advice in ((1, "Pad it to 2"), (9, "at most 8"), (100, "at most 8")):
            with pytest.raises(InputError) as refused:
                loaded(np.zeros((n, 3, 6, 6), np.float32))
            message = str(refused.value)
            for part in (f"size {n} on axis 0", "'batch'", "sizes 2 to 8", advice):
                assert part in message, message


@pytest.fixture(scope="module")
def onnx_and_torchscript(tmp_path_factory):
    return protected(tmp_path_factory.mktemp("ranges"), EF.ONNX | EF.TORCHSCRIPT_CPU)


@pytest.mark.parametrize(
    ("fmt", "file"), [("onnx", "onnx/net.onnx"), ("torchscript_cpu", "cpu/net.pt")]
)
def test_range_recorded_and_enforced(onnx_and_torchscript, fmt, file):
    check_format(*onnx_and_torchscript, fmt, file)


@pytest.mark.slow
def test_range_recorded_and_enforced_aoti(tmp_path):
    check_format(*protected(tmp_path, EF.INDUCTOR_CPU), "inductor_cpu", "cpu/net.pt2")
