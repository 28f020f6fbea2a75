"""A configuration rewritten by a later call (a migration, a customer change, another model)
keeps the permissions its owner gave it."""

from __future__ import annotations

from pathlib import Path

from tests.models import LIFECYCLE_INPUT, lifecycle_mlp

from skprotect_pytorch import Customer
from skprotect_pytorch.protect import SkProtectorPyTorch

EF = SkProtectorPyTorch.ExportFormat
EP = SkProtectorPyTorch.ExportPlatform


def test_a_rewritten_configuration_keeps_its_permissions(workdir: Path) -> None:
    """A skconfig.json made 0640 (readable by the runtime's group only) came back 0644,
    readable by every user, from migrate_configuration, update_customer and each protection."""
    protector = SkProtectorPyTorch(application_name="app")
    protector.protect_new_model(
        lifecycle_mlp(0), "m", [LIFECYCLE_INPUT], model_export_formats=EF.TORCHSCRIPT_CPU,
        platform_version=1,
    )  # fmt: skip
    config = protector.config_path(EP.TXT)
    assert config.stat().st_mode & 0o777 == 0o644  # a new file
    config.chmod(0o640)
    protector.migrate_configuration(2, EP.TXT, customer=Customer(5))
    assert config.stat().st_mode & 0o777 == 0o640
    protector.update_customer(Customer(6), EP.TXT)
    assert config.stat().st_mode & 0o777 == 0o640
    protector.protect_updated_model(
        lifecycle_mlp(1), "m", [LIFECYCLE_INPUT], model_export_formats=EF.TORCHSCRIPT_CPU,
        customer=Customer(6),
    )  # fmt: skip
    assert config.stat().st_mode & 0o777 == 0o640
