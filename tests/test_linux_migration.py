"""Migrating a LINUX version-0 configuration whose model file was replaced by another model's:
with the application's KEK each model file is checked against its encrypted key file (whose
AES-GCM tag authenticates the model file's SHA-256), so the wrong file is refused before
anything is written instead of being signed into version 1 and refused by the runtime."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from skprotect_pytorch import configuration
from skprotect_pytorch.errors import ConfigurationError
from skprotect_pytorch.protect import SkProtectorPyTorch
from skruntime import SkRuntime

EF = SkProtectorPyTorch.ExportFormat
EP = SkProtectorPyTorch.ExportPlatform
X = torch.randn(2, 6, generator=torch.Generator().manual_seed(0))
STALE = r"n/onnx/n\.onnx are not the files their key files were written for"


def mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()


@pytest.fixture
def linux_v0_app(workdir: Path) -> SkProtectorPyTorch:
    """A LINUX application at platform version 0 with models m and n, m's file copied over n's
    (n's own file kept in ``workdir / "n.onnx"``)."""
    protector = SkProtectorPyTorch(application_name="app")
    for name, seed in (("m", 0), ("n", 1)):
        protector.protect_new_model(
            mlp(seed),
            name,
            [X],
            model_export_formats=EF.ONNX,
            deployment_platform=EP.LINUX,
            platform_version=0,
        )
    folder = protector.outputs_dir
    shutil.copyfile(folder / "n/onnx/n.onnx", workdir / "n.onnx")
    shutil.copyfile(folder / "m/onnx/m.onnx", folder / "n/onnx/n.onnx")
    return protector


def test_the_kek_refuses_another_models_file_and_passes_the_right_one(
    linux_v0_app: SkProtectorPyTorch, workdir: Path
) -> None:
    """Without the check the migration signed m's file as n's; the runtime then refused n."""
    protector = linux_v0_app
    config = protector.config_path(EP.LINUX)
    before = config.read_bytes()
    state = protector.state
    for version in (1, 2):
        with pytest.raises(ConfigurationError, match=STALE):
            configuration.migrate_configuration(
                config, version, signing_key=state.signing_key, kek=state.kek
            )
        assert config.read_bytes() == before
    # the check a protection runs before its export, for the automatic migration
    with pytest.raises(ConfigurationError, match=STALE):
        configuration.check_migratable(
            config,
            configuration.load_own(config, state.signing_key),
            config.parent,
            None,
            kek=state.kek,
        )
    # n's own file back: the same check lets it through and the runtime runs both models
    shutil.copyfile(workdir / "n.onnx", protector.outputs_dir / "n/onnx/n.onnx")
    configuration.migrate_configuration(config, 1, signing_key=state.signing_key, kek=state.kek)
    runtime = SkRuntime(protector.outputs_dir, platform="LINUX", kek=state.kek)
    assert runtime.config.platform_version == 1
    for name, seed in (("m", 0), ("n", 1)):
        with runtime.load(name) as model, torch.no_grad():
            assert abs(model(X.numpy()) - mlp(seed)(X).numpy()).max() < 1e-4, name


def test_the_protector_migration_refuses_another_models_file(
    linux_v0_app: SkProtectorPyTorch,
) -> None:
    protector = linux_v0_app
    config = protector.config_path(EP.LINUX)
    before = config.read_bytes()
    with pytest.raises(ConfigurationError, match=STALE):
        protector.migrate_configuration(1, EP.LINUX)
    assert config.read_bytes() == before


def test_the_automatic_migration_refuses_another_models_file(
    linux_v0_app: SkProtectorPyTorch,
) -> None:
    protector = linux_v0_app
    config = protector.config_path(EP.LINUX)
    before = config.read_bytes()
    with pytest.raises(ConfigurationError, match=STALE):
        protector.protect_updated_model(
            mlp(0), "m", [X], model_export_formats=EF.ONNX, deployment_platform=EP.LINUX
        )
    assert config.read_bytes() == before
