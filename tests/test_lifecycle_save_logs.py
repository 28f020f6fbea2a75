"""``save_logs=True`` across a deployment's lifecycle: every public call's failure reaches the log
with its traceback (a migration, a customer change and an argument error, not only a failed
export), and the log says what a migration did."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from tests.models import LIFECYCLE_INPUT, lifecycle_mlp

from skprotect_pytorch import Customer
from skprotect_pytorch.errors import ConfigurationError, InvalidArgumentError
from skprotect_pytorch.protect import SkProtectorPyTorch

EF = SkProtectorPyTorch.ExportFormat
EP = SkProtectorPyTorch.ExportPlatform


def test_failed_migrations_and_customer_changes_are_in_the_log(workdir: Path) -> None:
    """A failed migrate_configuration or update_customer left nothing in the log of
    save_logs=True (only successes were logged), and a migration to the file's own version was
    logged as "migrated"."""
    protector = SkProtectorPyTorch(application_name="app", save_logs=True)
    protector.protect_new_model(
        lifecycle_mlp(0), "m", [LIFECYCLE_INPUT], model_export_formats=EF.ONNX, platform_version=0
    )
    shutil.move(workdir / "outputs/app/m", workdir / "m_elsewhere")
    with pytest.raises(ConfigurationError, match="are missing") as missing:
        protector.migrate_configuration(1, EP.TXT)
    with pytest.raises(ConfigurationError, match="needs a platform version 2") as below_2:
        protector.update_customer(Customer(7, "acme"), EP.TXT)
    shutil.move(workdir / "m_elsewhere", workdir / "outputs/app/m")
    protector.migrate_configuration(1, EP.TXT)
    protector.migrate_configuration(1, EP.TXT)

    log = protector.log_path.read_text()
    assert "ERROR migrate_configuration to version 1 failed\nTraceback" in log
    assert str(missing.value) in log
    assert "ERROR update_customer failed\nTraceback" in log
    assert str(below_2.value) in log
    config = protector.config_path(EP.TXT)
    assert log.count(f"INFO migrated {config} from platform version 0 to 1\n") == 1
    assert f"INFO {config} is already at platform version 1: nothing to migrate\n" in log


def test_an_argument_error_of_a_protection_is_in_the_log(workdir: Path) -> None:
    """An argument the protection refuses was raised before the log was opened: the log that
    save_logs=True keeps for Skyld did not say why the call failed."""
    protector = SkProtectorPyTorch(application_name="app", save_logs=True)
    with pytest.raises(InvalidArgumentError, match="platform_version must be one of") as error:
        protector.protect_new_model(
            lifecycle_mlp(0), "m", [LIFECYCLE_INPUT], model_export_formats=EF.ONNX,
            platform_version=3,
        )  # fmt: skip
    log = protector.log_path.read_text()
    assert "ERROR protect_new_model of 'm' failed\nTraceback" in log
    assert str(error.value) in log
