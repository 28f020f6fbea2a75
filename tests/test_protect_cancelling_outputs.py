"""Models whose outputs cancel to near zero protect: there the lock's float32 rounding shows
against the outputs' own size, and the checks decide against the original computed in float64.

Until 2026-12-07 every check compared with the original's float32 outputs at 1e-4 (relative),
and a model subtracting two nearly equal heads was refused ("The locked model differs from the
original by 1.35e-03 (relative) before export. The model probably reads a layer's weights
outside its forward()"), although its own float32 outputs were 6e-5 from the exact ones."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from tests.assertions import assert_garbage
from torch import nn

from skprotect_pytorch.errors import VerificationError
from skprotect_pytorch.export import get_exporter
from skprotect_pytorch.export.base import check_outputs
from skprotect_pytorch.pipeline import _as_numpy
from skprotect_pytorch.protect import SkProtectorPyTorch
from skprotect_pytorch.rounding import AMPLIFICATION, LIMIT, RTOL, ExactOutputs, within_rounding
from skruntime.runtime import SkRuntime

EF = SkProtectorPyTorch.ExportFormat


class Cancelling(nn.Module):
    """Two Linear heads over one hidden layer, equal but for 1e-4 noise, subtracted."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.hidden = nn.Sequential(nn.Linear(32, 256), nn.ReLU())
        self.head, self.twin = nn.Linear(256, 4), nn.Linear(256, 4)
        with torch.no_grad():
            self.twin.weight.copy_(self.head.weight + 1e-4 * torch.randn_like(self.head.weight))
            self.twin.bias.copy_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.hidden(x)
        return self.head(h) - self.twin(h)


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(b))


def test_a_model_whose_outputs_cancel_protects_and_runs(workdir: Path) -> None:
    """Locked ONNX and TorchScript files and the saved originals of such a model are written,
    checked at two batch sizes, and run with the key as close to the exact outputs as float32
    rounding goes; without the key they are garbage."""
    model = Cancelling(0).eval()
    x = torch.randn(8, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        own32 = model(x).numpy()
        exact = copy.deepcopy(model).double()(x.double()).numpy()
    own = rel(own32, exact)
    assert RTOL / 10 < own < RTOL  # the original's own float32 outputs: the case cancels
    protector = SkProtectorPyTorch(application_name="app")
    protector.protect_new_model(
        model,
        "m",
        [x],
        model_export_formats=EF.ONNX | EF.TORCHSCRIPT_CPU,
        dynamic_shapes=[{0: torch.export.Dim("batch")}],
        save_original=True,
    )
    runtime = SkRuntime(protector.outputs_dir, platform="TXT")
    for fmt in ("onnx", "torchscript_cpu"):
        with runtime.load("m", fmt) as loaded:
            got = np.asarray(loaded(x.numpy()))
        assert RTOL < rel(got, exact) < AMPLIFICATION * own, fmt
    originals = sorted(p.name for p in (workdir / "outputs" / "app" / "m" / "original").iterdir())
    assert originals == ["m_onnx.onnx", "m_torchscript_cpu.pt"]
    path = workdir / "outputs" / "app" / "m" / "onnx" / "m.onnx"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x_in, key_in = session.get_inputs()
    (wrong,) = session.run(None, {x_in.name: x.numpy(), key_in.name: np.zeros(key_in.shape, "f")})
    assert_garbage(wrong, own32)


def test_rounding_widens_within_its_factor_and_limit_only() -> None:
    """A check widened for rounding accepts up to AMPLIFICATION times the original's own error,
    never beyond LIMIT, and nothing beyond RTOL where the original does not cancel."""
    assert within_rounding(5e-3, 1e-4)
    assert not within_rounding(2e-2, 1e-3)  # 20 times its own, but past LIMIT: not rounding
    assert not within_rounding(LIMIT * 1.01, 1.0)  # a random forward: its own error is O(1)
    assert not within_rounding(2 * RTOL, 1e-8)  # no cancellation: RTOL holds
    assert not within_rounding(2e-3, 1e-5)


class Fixed32(nn.Module):
    """A forward that fixes its dtype: it cannot run in float64."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.to(torch.float32))


def test_exact_outputs_run_once_per_input_set_and_none_without_float64() -> None:
    """The float64 copy runs once per input set (twice: a random forward is no rounding; the
    checks of several formats ask again), the user's model stays float32, and a model that
    cannot run in float64 gives None."""
    model = Cancelling(0).eval()
    calls: list[int] = []
    model.register_forward_hook(lambda *args: calls.append(1))
    exact = ExactOutputs(model, _as_numpy)
    x = torch.randn(3, 32)
    first = exact([x])
    assert first is not None and first[0].dtype == np.float64
    assert exact([x]) is first and len(calls) == 2  # run twice: a random forward is refused
    assert exact([x.clone()]) is not first and len(calls) == 4
    assert next(model.parameters()).dtype == torch.float32
    assert ExactOutputs(Fixed32(), _as_numpy)([torch.randn(2, 4)]) is None


@pytest.mark.parametrize(("outputs", "passes"), [("20x", True), ("5%", False)])
def test_an_artifact_check_passes_rounding_and_refuses_a_real_difference(
    tmp_path: Path, outputs: str, passes: bool
) -> None:
    """check_outputs with the float64 outputs: outputs 20 times as far from them as the
    original's own float32 ones (beyond RTOL from those) pass; outputs 5 % off are refused."""
    model = Cancelling(3).eval()
    x = torch.randn(8, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = model(x).numpy()
    exact = ExactOutputs(model, _as_numpy)
    wide = exact([x])[0]
    got = wide + 20 * (expected - wide) if outputs == "20x" else wide * 1.05

    def check() -> float:
        return check_outputs(
            get_exporter(EF.ONNX),
            tmp_path / "m.onnx",
            lambda _: [got],
            [x.numpy()],
            [expected],
            exact=lambda: exact([x]),
        )

    if passes:
        assert check() > RTOL
    else:
        with pytest.raises(VerificationError, match="differs from the reference"):
            check()


@pytest.mark.parametrize("update", [False, True], ids=["same-model", "another-version"])
def test_the_other_platforms_file_is_kept_for_this_model_only(workdir: Path, update: bool) -> None:
    """The second platform keeps the first one's file where it computes this very model. Held
    against the original's float64 outputs (widened for rounding), a file of the previous
    version, 0.2 % off, was kept without a warning, and the LINUX deployment ran the old model."""
    platforms = SkProtectorPyTorch.ExportPlatform
    x = torch.randn(8, 32, generator=torch.Generator().manual_seed(1))
    v1 = Cancelling(0).eval()
    v2 = copy.deepcopy(v1)
    if update:
        with torch.no_grad():
            v2.twin.bias -= 2e-3 * v1(x).abs().max()  # 0.2 % of the outputs' size
    protector = SkProtectorPyTorch(application_name="app")
    for model, platform in ((v1, platforms.TXT), (v2, platforms.LINUX)):
        path = workdir / "outputs" / "app" / "m" / "onnx" / "m.onnx"
        first = path.read_bytes() if path.exists() else b""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            protector.protect_new_model(
                model, "m", [x], model_export_formats=EF.ONNX, deployment_platform=platform
            )
    replaced = [w for w in caught if "was the TXT deployment's file" in str(w.message)]
    assert (path.read_bytes() != first) is update
    assert bool(replaced) is update


class Noisy(nn.Module):
    """Outputs of ordinary size (no cancellation) with 0.1 % noise drawn in eval mode."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        return y + 1e-3 * y.abs().max() * torch.randn_like(y)


def test_a_random_forward_is_not_widened_as_rounding(workdir: Path) -> None:
    """A random forward's own error against float64 is its noise, not rounding: it opened the
    widening, and a model that does not reproduce itself was protected ("float32 rounding
    only ... they cancel"), where before it was refused."""
    assert ExactOutputs(Noisy(), _as_numpy)([torch.randn(4, 16)]) is None
    with pytest.raises(VerificationError, match="differs from the original"):
        SkProtectorPyTorch(application_name="app").protect_new_model(
            Noisy().eval(), "m", [torch.randn(4, 16)], model_export_formats=EF.ONNX
        )
