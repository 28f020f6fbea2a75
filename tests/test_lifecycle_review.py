"""A deployment's lifecycle as a team runs it: arguments the lock would only fail on deep
inside, and a version-0 migration after a protection killed while moving its files in."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import skprotect_pytorch.pipeline as pipeline
from skprotect_pytorch.errors import ConfigurationError, InvalidArgumentError
from skprotect_pytorch.protect import SkProtectorPyTorch
from skprotect_pytorch.staging import Staging
from skruntime import SkRuntime

EF = SkProtectorPyTorch.ExportFormat
EP = SkProtectorPyTorch.ExportPlatform


def mlp(seed: int, features: int = 6) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(features, 8), nn.ReLU(), nn.Linear(8, 3)).eval()


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    "layer_filter",
    [lambda: True, lambda name: True, lambda name, module, extra: True, lambda *, n, m: True],
    ids=["none", "one", "three", "keyword-only"],
)
def test_a_layer_filter_of_another_arity_is_an_argument_error(
    workdir: Path, layer_filter: object
) -> None:
    """It passed the check (callable) and failed once locking began, with a bare TypeError
    from inside the lock: "<lambda>() takes 0 positional arguments but 2 were given"."""
    with pytest.raises(InvalidArgumentError, match=r"layer_filter must take two positional"):
        SkProtectorPyTorch(application_name="app").protect_new_model(
            mlp(0),
            "m",
            [torch.randn(2, 6)],
            layer_filter=layer_filter,
            model_export_formats=EF.ONNX,
        )
    assert not (workdir / "outputs").exists()


class Killed(Exception):
    """The process dies here: no rollback, no cleanup runs."""


def killed_while_committing(
    protector: SkProtectorPyTorch,
    monkeypatch: pytest.MonkeyPatch,
    model: nn.Module,
    x: torch.Tensor,
) -> None:
    """Run an update of 'net' that dies after moving every file in, before the configuration
    is written: the new files in place, the previous ones in the backup folder."""

    def die(*args: object, **kwargs: object) -> None:
        raise Killed

    def released(staging: Staging) -> None:  # the process is gone: its lock with it
        if staging.owner is not None:
            os.close(staging.owner)
            staging.owner = None

    with monkeypatch.context() as dying:
        dying.setattr(pipeline, "add_model", die)
        dying.setattr(Staging, "rollback", lambda staging: None)
        dying.setattr(Staging, "cleanup", released)
        with pytest.raises(Killed):
            protector.protect_updated_model(
                model, "net", [x], model_export_formats=EF.ONNX, platform_version=0
            )


def test_a_version_0_migration_does_not_sign_a_killed_protections_files(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """migrate_configuration(1) hashed the files the killed update had moved in (another
    architecture: 10 inputs) into the deployed entry (6 inputs): the runtime then refused the
    model (KeyFileError: 87 key values, the configuration expects 75), and the next protection
    took the configuration for the killed one's and deleted the previous files for good."""
    x = torch.randn(2, 6)
    protector = SkProtectorPyTorch(application_name="app")
    protector.protect_new_model(
        mlp(0), "net", [x], model_export_formats=EF.ONNX, platform_version=0
    )
    app = protector.outputs_dir
    deployed = tree(app)
    killed_while_committing(protector, monkeypatch, mlp(1, features=10), torch.randn(2, 10))
    (backup,) = app.glob(".staging-*-backup")
    config_before = (app / "skconfig.json").read_bytes()
    with pytest.raises(ConfigurationError, match=r"killed while moving its files") as info:
        protector.migrate_configuration(1, EP.TXT)
    assert str(backup) in str(info.value) and "net/onnx/net.onnx" in str(info.value)
    assert (app / "skconfig.json").read_bytes() == config_before
    with pytest.raises(ConfigurationError, match=r"killed while moving its files"):
        protector.protect_new_model(mlp(2), "other", [x], model_export_formats=EF.ONNX)
    # what the error says to do: the previous files back, the folder deleted
    for file in (p for p in backup.rglob("*") if p.is_file()):
        os.replace(file, app / file.relative_to(backup))
    for folder in app.glob(".staging-*"):  # the backup folder and the killed staging folder
        shutil.rmtree(folder)
    assert tree(app) == deployed
    protector.migrate_configuration(2, EP.TXT)
    with SkRuntime(app, platform="TXT") as runtime, runtime.load("net") as net:
        got = net(x.numpy())
    with torch.no_grad():
        assert np.abs(got - mlp(0)(x).numpy()).max() < 1e-4


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        (torch.randn(0, 6), r"input_tensors\[0\] has no elements \(shape \(0, 6\)\)"),
        (torch.randn(2, 6).to_sparse(), r"input_tensors\[0\] is a sparse_coo tensor"),
        (
            torch.randn(2, 6).to(torch.bfloat16),
            r"input_tensors\[0\] is bfloat16, which NumPy has no type for.*\.float\(\)",
        ),
    ],
    ids=["empty", "sparse", "bfloat16"],
)
def test_an_example_tensor_the_runtime_cannot_be_fed_like_is_refused(
    workdir: Path, tensor: torch.Tensor, message: str
) -> None:
    """An empty example (batch 0) was protected: nothing was compared in the checks, and the
    deployed files took batch 0 only (the runtime refused (2, 6): "axis 0 must be 0"). A
    sparse one failed as an UnsupportedLayerError blaming the model's forward(), and a bfloat16
    one with torch's "TypeError: Got unsupported ScalarType BFloat16" after the lock."""
    with pytest.raises(InvalidArgumentError, match=message):
        SkProtectorPyTorch(application_name="app").protect_new_model(
            mlp(0), "m", [tensor], model_export_formats=EF.ONNX
        )
    assert not (workdir / "outputs").exists()
