"""A version-0 application and the error of migrating it, shared by the key-file fault tests
of both platforms."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

from skprotect_pytorch import configuration
from skprotect_pytorch.errors import ConfigurationError
from skprotect_pytorch.protect import SkProtectorPyTorch

EF = SkProtectorPyTorch.ExportFormat
EP = SkProtectorPyTorch.ExportPlatform
X = torch.randn(2, 6, generator=torch.Generator().manual_seed(0))
ADVICE = r"Make an unreadable key file readable by this user and retry; put a damaged one back"


def protect_v0(platform: SkProtectorPyTorch.ExportPlatform) -> SkProtectorPyTorch:
    """An application of ``platform`` at platform version 0 with one ONNX model ``m``."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    protector = SkProtectorPyTorch(application_name="app")
    protector.protect_new_model(
        model,
        "m",
        [X],
        model_export_formats=EF.ONNX,
        deployment_platform=platform,
        platform_version=0,
    )
    return protector


def refused(protector: SkProtectorPyTorch, platform: SkProtectorPyTorch.ExportPlatform) -> str:
    """The error of migrating ``platform``'s configuration to version 1, which stays unchanged;
    the check a protection runs before its export says the same."""
    config = protector.config_path(platform)
    before = config.read_bytes()
    with pytest.raises(ConfigurationError) as caught:
        protector.migrate_configuration(1, platform)
    assert config.read_bytes() == before
    state = protector.state
    with pytest.raises(ConfigurationError) as precheck:
        configuration.check_migratable(
            config,
            configuration.load_own(config, state.signing_key),
            config.parent,
            None,
            kek=state.kek,
        )
    assert str(precheck.value) == str(caught.value)
    return str(caught.value)


def deny_reading(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    """Make opening ``path`` fail with EACCES, as permissions 000 would: tests run as root, who
    reads any file, so it is simulated where the kernel gives it, at ``os.open``, which
    ``open_regular`` calls."""
    real_open = os.open

    def denying(file, *args, **kwargs):  # type: ignore[no-untyped-def]
        if isinstance(file, str | os.PathLike) and Path(file) == path:
            raise PermissionError(13, "Permission denied", os.fspath(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(os, "open", denying)
