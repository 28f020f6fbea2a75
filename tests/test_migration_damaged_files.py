"""Migrating a version-0 configuration whose protected model files were damaged: a model file
replaced since its protection is refused before anything is written, as a missing one is, and
the way out the message gives (update that model at version 0, then migrate) works."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from skprotect_pytorch import Customer
from skprotect_pytorch.errors import ConfigurationError, StateError
from skprotect_pytorch.protect import SkProtectorPyTorch
from skruntime import SkRuntime

EF = SkProtectorPyTorch.ExportFormat
EP = SkProtectorPyTorch.ExportPlatform
X = torch.randn(2, 6, generator=torch.Generator().manual_seed(0))
REPAIR = r"re-protect 'n' with protect_updated_model\(\.\.\., platform_version=0\) and migrate"


def mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()


def version_0_app() -> SkProtectorPyTorch:
    """An application whose TXT configuration is at platform version 0, with models m and n."""
    protector = SkProtectorPyTorch(application_name="app")
    for name, seed in (("m", 0), ("n", 1)):
        protector.protect_new_model(
            mlp(seed), name, [X], model_export_formats=EF.ONNX, platform_version=0
        )
    return protector


def test_a_replaced_model_file_is_refused_before_the_migration_writes(workdir: Path) -> None:
    """The migration used to hash whatever file was there: m's file copied over n's was signed
    into version 1, and the runtime then refused n (KeyFileError)."""
    protector = version_0_app()
    folder = protector.outputs_dir
    shutil.copyfile(folder / "m/onnx/m.onnx", folder / "n/onnx/n.onnx")
    config = protector.config_path(EP.TXT)
    before = config.read_bytes()
    stale = r"n/onnx/n\.onnx are not the files their key files were written for"
    for version in (1, 2):
        with pytest.raises(ConfigurationError, match=f"{stale}.*{REPAIR}"):
            protector.migrate_configuration(version, EP.TXT, Customer())
        assert config.read_bytes() == before
    # the automatic migration of a protection is refused the same way, before the export
    with pytest.raises(ConfigurationError, match=stale):
        protector.protect_updated_model(mlp(0), "m", [X], model_export_formats=EF.ONNX)
    assert config.read_bytes() == before
    # the way out the message gives
    protector.protect_updated_model(
        mlp(1), "n", [X], model_export_formats=EF.ONNX, platform_version=0
    )
    protector.migrate_configuration(2, EP.TXT, Customer(7, "Seven"))
    runtime = SkRuntime(folder)
    assert runtime.config.platform_version == 2
    for name, seed in (("m", 0), ("n", 1)):
        with runtime.load(name) as model, torch.no_grad():
            assert abs(model(X.numpy()) - mlp(seed)(X).numpy()).max() < 1e-4, name


def test_a_missing_model_file_names_the_model_to_re_protect(workdir: Path) -> None:
    protector = version_0_app()
    moved = workdir / "n.onnx"
    (protector.outputs_dir / "n/onnx/n.onnx").rename(moved)
    config = protector.config_path(EP.TXT)
    before = config.read_bytes()
    with pytest.raises(ConfigurationError, match=r"n/onnx/n\.onnx are missing.*" + REPAIR):
        protector.migrate_configuration(1, EP.TXT)
    assert config.read_bytes() == before
    moved.rename(protector.outputs_dir / "n/onnx/n.onnx")  # put back: the migration goes on
    protector.migrate_configuration(1, EP.TXT)
    assert SkRuntime(protector.outputs_dir).config.platform_version == 1


def test_a_lost_state_folder_creates_no_new_master_secret(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """migrate_configuration and update_customer created a new master.key where the state
    folder was missing, then failed with "signed by a different application key", leaving a
    secret that unlocks none of the application's files."""
    protector = SkProtectorPyTorch(application_name="app")
    protector.protect_new_model(mlp(0), "m", [X], model_export_formats=EF.ONNX, platform_version=1)
    config = protector.config_path(EP.TXT)
    before = config.read_bytes()
    elsewhere = workdir / "elsewhere"
    monkeypatch.setenv("SKPROTECT_STATE_DIR", str(elsewhere))
    lost = SkProtectorPyTorch(application_name="app")
    for call in (
        lambda: lost.migrate_configuration(2, EP.TXT, Customer(3, "Three")),
        lambda: lost.update_customer(Customer(3, "Three"), EP.TXT),
    ):
        with pytest.raises(StateError, match="application 'app' has no master secret"):
            call()
        assert not (elsewhere / "app" / "master.key").exists()
        assert config.read_bytes() == before
