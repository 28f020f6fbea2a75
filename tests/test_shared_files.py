"""One application protected for both platforms: they share each format group's model file, so
a protection for one must keep the other's deployment running (skprotect_pytorch.shared_files).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from skprotect_pytorch.errors import InvalidArgumentError
from skprotect_pytorch.protect import SkProtectorPyTorch
from skruntime import SkRuntime
from skruntime.errors import IntegrityError

EF = SkProtectorPyTorch.ExportFormat
EP = SkProtectorPyTorch.ExportPlatform
FORMATS = EF.ONNX | EF.TORCHSCRIPT_CPU
X = torch.randn(2, 6, generator=torch.Generator().manual_seed(3))


def make_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4)).eval()


def expected(seed: int) -> np.ndarray:
    with torch.no_grad():
        return make_model(seed)(X).numpy()


def runs(protector: SkProtectorPyTorch, platform: EP, fmt: str, seed: int) -> bool:
    """Whether the platform's deployment runs ``fmt`` and gives model ``seed``'s outputs."""
    kek = protector.state.kek if platform is EP.LINUX else None
    runtime = SkRuntime(protector.outputs_dir, platform=platform.value, kek=kek)
    with runtime.load("net", fmt=fmt) as model:
        y = model(X.numpy())
    return bool(np.abs(y - expected(seed)).max() <= 1e-4 * np.abs(expected(seed)).max())


def protect(protector: SkProtectorPyTorch, platform: EP, seed: int = 0, **kwargs):
    method = protector.protect_updated_model if kwargs.pop("update", False) else None
    method = method or protector.protect_new_model
    return method(
        make_model(seed),
        "net",
        [X],
        model_export_formats=kwargs.pop("formats", FORMATS),
        deployment_platform=platform,
        **kwargs,
    )


def test_the_second_platform_keeps_the_first_ones_files(workdir: Path) -> None:
    """TorchScript files differ byte for byte on every export: the second platform's
    protection used to rewrite them, and the first platform's runtime then refused them."""
    protector = SkProtectorPyTorch(application_name="app")
    protect(protector, EP.TXT)
    pt = protector.outputs_dir / "net" / "cpu" / "net.pt"
    first = pt.read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # nothing to warn about
        protect(protector, EP.LINUX)
    assert pt.read_bytes() == first  # kept: the same model and key
    for platform in EP:
        for fmt in ("onnx", "torchscript_cpu"):
            assert runs(protector, platform, fmt, seed=0), (platform, fmt)


def test_another_version_for_one_platform_warns_about_the_other(workdir: Path) -> None:
    protector = SkProtectorPyTorch(application_name="app")
    protect(protector, EP.TXT)
    protect(protector, EP.LINUX)
    with pytest.warns(RuntimeWarning, match=r"net/cpu/net\.pt was the LINUX deployment's file"):
        protect(protector, EP.TXT, seed=1, update=True)
    assert runs(protector, EP.TXT, "torchscript_cpu", seed=1)
    with pytest.raises(IntegrityError):
        runs(protector, EP.LINUX, "torchscript_cpu", seed=0)
    protect(protector, EP.LINUX, seed=1, update=True)  # what the warning says to do
    assert runs(protector, EP.LINUX, "torchscript_cpu", seed=1)
    assert runs(protector, EP.TXT, "torchscript_cpu", seed=1)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"platform": EP.TXT}, {"platform": EP.LINUX, "test_key": True}),
        ({"platform": EP.LINUX, "test_key": True}, {"platform": EP.TXT}),
    ],
    ids=["linux-test-key-over-txt-shares", "txt-shares-over-linux-test-key"],
)
def test_key_files_of_the_other_kind_are_not_overwritten(workdir: Path, first, second) -> None:
    """A LINUX test key is written under the TXT key files' names: over a TXT deployment's
    shares it turned that deployment's key into the plain key, without a word."""
    protector = SkProtectorPyTorch(application_name="app")
    protect(protector, first.pop("platform"), formats=EF.ONNX, **first)
    folder = protector.outputs_dir / "net" / "onnx"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(InvalidArgumentError, match=r"net/onnx/key_vector_inv_net\.txt"):
        protect(protector, second.pop("platform"), formats=EF.ONNX, **second)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_test_keys_for_both_platforms_are_the_same_files(workdir: Path) -> None:
    protector = SkProtectorPyTorch(application_name="app")
    protect(protector, EP.TXT, formats=EF.ONNX, test_key=True)
    folder = protector.outputs_dir / "net" / "onnx"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    protect(protector, EP.LINUX, formats=EF.ONNX, test_key=True)
    after = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert {name: after[name] for name in before} == before  # same key, same model hashes
    assert runs(protector, EP.TXT, "onnx", seed=0) and runs(protector, EP.LINUX, "onnx", seed=0)


def test_an_update_for_one_platform_keeps_the_files_the_other_lists(workdir: Path) -> None:
    """LINUX updated to ONNX only used to retire net/cpu/net.pt, which TXT still ships."""
    protector = SkProtectorPyTorch(application_name="app")
    protect(protector, EP.TXT)
    protect(protector, EP.LINUX)
    protect(protector, EP.LINUX, formats=EF.ONNX, update=True)
    assert (protector.outputs_dir / "net" / "cpu" / "net.pt").is_file()
    assert runs(protector, EP.TXT, "torchscript_cpu", seed=0)
    assert runs(protector, EP.LINUX, "onnx", seed=0)


def test_a_version_0_deployment_is_kept_too(workdir: Path) -> None:
    """A version-0 configuration records no SHA-256; its file is still the same model."""
    protector = SkProtectorPyTorch(application_name="app")
    protect(protector, EP.LINUX, platform_version=0)
    pt = protector.outputs_dir / "net" / "cpu" / "net.pt"
    first = pt.read_bytes()
    protect(protector, EP.TXT)
    assert pt.read_bytes() == first
    assert runs(protector, EP.LINUX, "torchscript_cpu", seed=0)
    assert runs(protector, EP.TXT, "torchscript_cpu", seed=0)


@pytest.mark.slow
def test_shared_test_key_files_unlock_both_platforms_model_files(workdir: Path) -> None:
    """TXT and LINUX test keys share the CPU group's key files: written by LINUX for its
    TorchScript file only, they used to refuse TXT's AOTInductor file."""
    protector = SkProtectorPyTorch(application_name="app")
    cpu = EF.TORCHSCRIPT_CPU | EF.INDUCTOR_CPU
    protect(protector, EP.TXT, formats=cpu, test_key=True)
    protect(protector, EP.LINUX, formats=EF.TORCHSCRIPT_CPU, test_key=True)
    for fmt in ("torchscript_cpu", "inductor_cpu"):
        assert runs(protector, EP.TXT, fmt, seed=0), fmt
    assert runs(protector, EP.LINUX, "torchscript_cpu", seed=0)
