"""What the lifecycle calls (migrate_configuration, update_customer) say about a wrong argument:
what was wrong, and the value to pass instead."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.models import LIFECYCLE_INPUT, lifecycle_mlp

from skprotect_pytorch import Customer
from skprotect_pytorch.errors import InvalidArgumentError
from skprotect_pytorch.protect import SkProtectorPyTorch

EF = SkProtectorPyTorch.ExportFormat
EP = SkProtectorPyTorch.ExportPlatform


def test_a_version_that_is_no_int_names_the_versions(workdir: Path) -> None:
    """``version must be an int, but got None.`` said neither which versions exist nor which
    one to pass (the usage document types ``version`` Optional)."""
    protector = SkProtectorPyTorch(application_name="app")
    with pytest.raises(InvalidArgumentError) as error:
        protector.migrate_configuration(None, EP.TXT)
    assert str(error.value) == (
        "version must be an int, one of 0, 1, 2, but got None. Use 2 unless your SkRuntime "
        "needs an older version."
    )


@pytest.mark.parametrize(
    ("customer", "advice"),
    [(5, "customer=Customer(id=5)"), ({"id": 5}, 'customer=Customer(id=42, name="acme")')],
)
def test_a_customer_that_is_no_customer_says_how_to_make_one(
    workdir: Path, customer: object, advice: str
) -> None:
    """``customer must be a skprotect_pytorch.Customer, but got int.`` did not say how to build
    one, nor where to import it from."""
    protector = SkProtectorPyTorch(application_name="app")
    calls = [
        lambda: protector.update_customer(customer, EP.TXT),  # type: ignore[arg-type]
        lambda: protector.migrate_configuration(2, EP.TXT, customer=customer),  # type: ignore[arg-type]
        lambda: protector.protect_new_model(
            lifecycle_mlp(0),
            "m",
            [LIFECYCLE_INPUT],
            customer=customer,  # type: ignore[arg-type]
        ),
    ]
    for call in calls:
        with pytest.raises(InvalidArgumentError) as error:
            call()
        assert f"pass e.g. {advice} (from skprotect_pytorch import Customer)." in str(error.value)
    assert not (workdir / "outputs").exists()


def test_another_customer_for_a_version_2_file_names_both_customers(workdir: Path) -> None:
    """The refusal showed the file's customer as ``CustomerEntry(id=4, name='')`` and ended
    with "Use update_customer(customer, platform) to."."""
    protector = SkProtectorPyTorch(application_name="app")
    protector.protect_new_model(
        lifecycle_mlp(0), "m", [LIFECYCLE_INPUT], model_export_formats=EF.TORCHSCRIPT_CPU,
        customer=Customer(4),
    )  # fmt: skip
    with pytest.raises(InvalidArgumentError) as error:
        protector.migrate_configuration(2, EP.TXT, customer=Customer(5, "acme"))
    assert str(error.value) == (
        f"{protector.config_path(EP.TXT)} is already at platform version 2, licensed to "
        "Customer(4, ''): migrating does not change its customer. Use "
        "update_customer(Customer(id=5, name='acme'), deployment_platform) to change it."
    )
