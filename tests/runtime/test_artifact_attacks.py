"""Attacks on the shipped files of a real protection (an MLP, ONNX, both platforms): what an
attacker who can rearrange the deployed folder gets. Each key file opens only for the model
file, model and format it was written for; a configuration cannot be re-encoded into another
meaning; and, as documented, nothing refuses an older deployment kept whole (no version or
epoch floor: a rotation protects the new files only)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.models import LIFECYCLE_INPUT, lifecycle_mlp

from skprotect_pytorch.customer import Customer
from skprotect_pytorch.protect import SkProtectorPyTorch
from skruntime import SkRuntime
from skruntime.errors import ConfigurationError, IntegrityError, KeyFileError

EF = SkProtectorPyTorch.ExportFormat
EP = SkProtectorPyTorch.ExportPlatform
X = LIFECYCLE_INPUT
mlp = lifecycle_mlp


@pytest.fixture(scope="module")
def versions(module_workdir: Path) -> dict[str, object]:
    """Two deployments of application ``app`` (models ``m``, ``m2``; TXT and LINUX): ``v1``
    for customer 7, and ``v2`` after ``m`` was updated with ``rotate_keys`` and the customer
    changed to 8. Each copied whole, with the KEK and the reference outputs of ``m``."""
    protector = SkProtectorPyTorch(application_name="app")
    model = mlp(0)
    for name, net in (("m", model), ("m2", mlp(1))):
        for platform in (EP.TXT, EP.LINUX):
            protector.protect_new_model(
                net,
                name,
                [X],
                model_export_formats=EF.ONNX,
                deployment_platform=platform,
                customer=Customer(7, "ACME"),
            )
    shutil.copytree(module_workdir / "outputs/app", module_workdir / "v1")
    for platform in (EP.TXT, EP.LINUX):
        protector.protect_updated_model(
            model,
            "m",
            [X],
            model_export_formats=EF.ONNX,
            deployment_platform=platform,
            customer=Customer(7, "ACME"),
            rotate_keys=platform == EP.TXT,  # LINUX then takes the rotated epoch
        )
        protector.update_customer(Customer(8, "BETA"), platform)
    shutil.copytree(module_workdir / "outputs/app", module_workdir / "v2")
    with torch.no_grad():
        expected = model(X).numpy()
    return {"root": module_workdir, "kek": protector.state.kek, "expected": expected}


def deployment(versions: dict, version: str, platform: str, name: str) -> Path:
    """A copy of one version's folder holding only ``platform``'s files (the LINUX one without
    the TXT key files, as shipped)."""
    folder = versions["root"] / f"{name}-{platform}"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(versions["root"] / version, folder)
    if platform == "LINUX":
        (folder / "skconfig.json").unlink()
        for key_file in folder.glob("*/onnx/key_*"):
            key_file.unlink()
    else:
        (folder / "skrpl").unlink()
        for key_file in folder.glob("*/onnx/mev_*"):
            key_file.unlink()
    return folder


def runtime(versions: dict, folder: Path, platform: str) -> SkRuntime:
    return SkRuntime(folder, kek=versions["kek"] if platform == "LINUX" else None)


def test_both_versions_compute_the_model(versions: dict) -> None:
    for version in ("v1", "v2"):
        for platform in ("TXT", "LINUX"):
            folder = deployment(versions, version, platform, f"ok-{version}")
            y = runtime(versions, folder, platform).load("m")(X.numpy())
            np.testing.assert_allclose(y, versions["expected"], rtol=1e-4, atol=1e-5)


def test_an_encrypted_key_file_moved_to_another_model_does_not_open(versions: dict) -> None:
    folder = deployment(versions, "v2", "LINUX", "moved")
    shutil.copy(folder / "m2/onnx/mev_m2_onnx.bin", folder / "m/onnx/mev_m_onnx.bin")
    with pytest.raises(KeyFileError, match="belongs to another model, format or model file"):
        runtime(versions, folder, "LINUX").load("m")


@pytest.mark.parametrize("platform", ["TXT", "LINUX"])
def test_key_files_of_the_replaced_epoch_do_not_unlock_the_new_model_file(
    versions: dict, platform: str
) -> None:
    """The rotation's point: the v1 key files (the leaked key) beside the v2 model file."""
    folder = deployment(versions, "v2", platform, "old-keys")
    old = deployment(versions, "v1", platform, "old-keys-source")
    for key_file in (old / "m/onnx").glob("mev_*" if platform == "LINUX" else "key_*"):
        shutil.copy(key_file, folder / "m/onnx" / key_file.name)
    with pytest.raises(KeyFileError):
        runtime(versions, folder, platform).load("m")


@pytest.mark.parametrize("platform", ["TXT", "LINUX"])
def test_an_older_configuration_needs_its_own_model_file(versions: dict, platform: str) -> None:
    folder = deployment(versions, "v2", platform, "old-config")
    name = "skrpl" if platform == "LINUX" else "skconfig.json"
    shutil.copy(versions["root"] / "v1" / name, folder / name)
    with pytest.raises(IntegrityError):
        runtime(versions, folder, platform).load("m")


@pytest.mark.parametrize("platform", ["TXT", "LINUX"])
def test_an_older_deployment_kept_whole_still_runs(versions: dict, platform: str) -> None:
    """No version or epoch floor (documented): the v1 folder, replayed over v2, runs as the
    customer v1 names. Retiring a version takes a licence denial or a new application key."""
    rt = runtime(versions, deployment(versions, "v1", platform, "replayed"), platform)
    assert (rt.config.customer.id, rt.config.models["m"].key_epoch) == (7, 0)
    np.testing.assert_allclose(rt.load("m")(X.numpy()), versions["expected"], rtol=1e-4, atol=1e-5)


def test_a_configuration_renamed_for_the_other_platform_is_refused(versions: dict) -> None:
    folder = deployment(versions, "v2", "LINUX", "renamed")
    shutil.copy(versions["root"] / "v2/skconfig.json", folder / "skrpl")
    with pytest.raises(ConfigurationError, match="is for platform TXT, but its name says LINUX"):
        runtime(versions, folder, "LINUX")


def test_a_configuration_re_encoded_keeps_its_meaning_or_is_refused(versions: dict) -> None:
    """The signature covers the parsed payload: spacing, key order and escapes may change
    (same values), a number written as 2.0 or a second copy of a field may not."""
    folder = deployment(versions, "v2", "TXT", "encoded")
    path = folder / "skconfig.json"
    document = json.loads(path.read_text())
    path.write_text(json.dumps(document, ensure_ascii=True, sort_keys=True, indent=None))
    assert SkRuntime(folder).config.customer.id == 8
    text = path.read_text()
    for edit in ('"platform_version": 2.0', '"platform_version": 1, "platform_version": 2'):
        path.write_text(text.replace('"platform_version": 2', edit, 1))
        with pytest.raises(ConfigurationError):
            SkRuntime(folder)
