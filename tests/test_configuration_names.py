"""Configuration operations: the platform argument is checked before use, the default
``onnx_params`` is a copy of its own, and a configuration under the other platform's file name
is refused instead of being migrated or re-signed (the runtime refuses it afterwards)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from skprotect_pytorch import Customer
from skprotect_pytorch import protect as protect_module
from skprotect_pytorch.errors import ConfigurationError, InvalidArgumentError
from skprotect_pytorch.export import DEFAULT_ONNX_PARAMS
from skprotect_pytorch.protect import SkProtectorPyTorch
from skruntime import SkRuntime
from skruntime.errors import ConfigurationError as RuntimeConfigurationError

EF = SkProtectorPyTorch.ExportFormat
EP = SkProtectorPyTorch.ExportPlatform
NOT_A_PLATFORM = "deployment_platform must be a single SkProtectorPyTorch.ExportPlatform value"


def test_a_string_platform_is_an_argument_error(workdir: Path) -> None:
    """``config_path("TXT")`` failed with AttributeError ('str' object has no attribute
    'value'); every call taking a platform now says what to pass."""
    protector = SkProtectorPyTorch(application_name="app")
    with pytest.raises(InvalidArgumentError, match=f"{NOT_A_PLATFORM}, but got 'TXT'"):
        protector.config_path("TXT")
    with pytest.raises(InvalidArgumentError, match=NOT_A_PLATFORM):
        protector.migrate_configuration(2, "TXT")
    with pytest.raises(InvalidArgumentError, match=NOT_A_PLATFORM):
        protector.update_customer(Customer(), "LINUX")
    with pytest.raises(InvalidArgumentError, match=NOT_A_PLATFORM):
        protector.protect_new_model(nn.Linear(3, 3), "m", [torch.ones(2, 3)], deployment_platform=1)


def test_default_onnx_params_shares_no_list_with_the_constant() -> None:
    """A shallow copy shared its lists: appending to ``default_onnx_params["input_names"]``
    changed the read-only DEFAULT_ONNX_PARAMS too."""
    for name, value in DEFAULT_ONNX_PARAMS.items():
        assert protect_module.default_onnx_params[name] == value
        if isinstance(value, list):
            assert protect_module.default_onnx_params[name] is not value


def _linux_config_named_txt(version: int) -> tuple[SkProtectorPyTorch, Path, bytes]:
    """A LINUX configuration renamed to the TXT configuration's name, and its bytes."""
    protector = SkProtectorPyTorch(application_name="app")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        protector.protect_new_model(
            nn.Linear(3, 3).eval(),
            "m",
            [torch.ones(2, 3)],
            model_export_formats=EF.ONNX,
            deployment_platform=EP.LINUX,
            platform_version=version,
        )
    renamed = protector.config_path(EP.LINUX).rename(protector.config_path(EP.TXT))
    return protector, renamed, renamed.read_bytes()


WRONG_NAME = "holds a LINUX configuration, but its name is the TXT one: restore the files"


def test_migrating_a_renamed_configuration_is_refused(workdir: Path) -> None:
    protector, path, before = _linux_config_named_txt(version=1)
    with pytest.raises(ConfigurationError, match=WRONG_NAME):
        protector.migrate_configuration(2, EP.TXT)
    assert path.read_bytes() == before  # neither migrated nor re-signed
    with pytest.raises(RuntimeConfigurationError):  # why: the runtime refuses it anyway
        SkRuntime(path.parent).load("m", "onnx")


def test_updating_the_customer_of_a_renamed_configuration_is_refused(workdir: Path) -> None:
    protector, path, before = _linux_config_named_txt(version=2)
    with pytest.raises(ConfigurationError, match=WRONG_NAME):
        protector.update_customer(Customer(7, "acme"), EP.TXT)
    assert path.read_bytes() == before
