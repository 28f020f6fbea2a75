"""The warning that a protection replaced a model file the other platform's deployment uses is
given once that file is in place, not when it is exported: a protection that fails afterwards
leaves the other deployment's file as it was, and must not say that deployment is broken."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.models import LIFECYCLE_INPUT, lifecycle_mlp

import skprotect_pytorch.pipeline as pipeline
from skprotect_pytorch.errors import ExportError
from skprotect_pytorch.protect import SkProtectorPyTorch
from skruntime import SkRuntime
from skruntime.errors import IntegrityError

EF = SkProtectorPyTorch.ExportFormat
EP = SkProtectorPyTorch.ExportPlatform
REPLACED = r"m/cpu/m\.pt was the TXT deployment's file and now holds this protection's"


def txt_runs_version(protector: SkProtectorPyTorch, seed: int) -> bool:
    """Whether the TXT deployment's model ``m`` runs and computes version ``seed``."""
    with SkRuntime(protector.outputs_dir, platform="TXT").load("m", "torchscript_cpu") as model:
        got = model(LIFECYCLE_INPUT.numpy())
    with torch.no_grad():
        expected = lifecycle_mlp(seed)(LIFECYCLE_INPUT).numpy()
    return bool(np.abs(got - expected).max() < 1e-4)


def test_a_failed_protection_does_not_say_it_broke_the_other_deployment(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Until 2026-12-07 the RuntimeWarning came as the file was exported, before the
    configuration was written: a protection that failed then warned that the TXT deployment's
    file "now holds this protection's" and that TXT refuses it, though every file was restored
    and TXT ran as before."""
    protector = SkProtectorPyTorch(application_name="app")
    for platform in (EP.TXT, EP.LINUX):
        protector.protect_new_model(
            lifecycle_mlp(0), "m", [LIFECYCLE_INPUT], model_export_formats=EF.TORCHSCRIPT_CPU,
            deployment_platform=platform,
        )  # fmt: skip

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        patch.setattr(pipeline, "add_model", disk_full)
        with pytest.raises(ExportError, match="the previous files are restored"):
            protector.protect_updated_model(
                lifecycle_mlp(1), "m", [LIFECYCLE_INPUT], model_export_formats=EF.TORCHSCRIPT_CPU,
                deployment_platform=EP.LINUX,
            )  # fmt: skip
    assert not [w for w in caught if "deployment's file and now holds" in str(w.message)]
    assert txt_runs_version(protector, 0)

    with pytest.warns(RuntimeWarning, match=REPLACED) as replaced:
        protector.protect_updated_model(
            lifecycle_mlp(1), "m", [LIFECYCLE_INPUT], model_export_formats=EF.TORCHSCRIPT_CPU,
            deployment_platform=EP.LINUX,
        )  # fmt: skip
    (warning,) = [w for w in replaced if "deployment's file and now holds" in str(w.message)]
    assert warning.filename == __file__  # the protector's caller


def test_the_warning_names_lock_settings_that_differ_between_platforms(workdir: Path) -> None:
    """The same model version protected for LINUX with another quantize_compatibility than its
    TXT deployment replaced TXT's file with a warning whose reasons (a new version, rotate_keys,
    dynamic ranges, ...) were none of the real one, and whose advice (protect for TXT again)
    broke LINUX in turn."""
    protector = SkProtectorPyTorch(application_name="app")
    protector.protect_new_model(
        lifecycle_mlp(0), "m", [LIFECYCLE_INPUT], model_export_formats=EF.TORCHSCRIPT_CPU
    )
    with pytest.warns(RuntimeWarning, match=REPLACED) as replaced:
        protector.protect_new_model(
            lifecycle_mlp(0), "m", [LIFECYCLE_INPUT], model_export_formats=EF.TORCHSCRIPT_CPU,
            deployment_platform=EP.LINUX, quantize_compatibility=True,
        )  # fmt: skip
    (warning,) = [w for w in replaced if "deployment's file and now holds" in str(w.message)]
    assert "another lock_preset or quantize_compatibility than that deployment's" in str(
        warning.message
    )
    assert "Protect both platforms with the same lock_preset, quantize_compatibility" in str(
        warning.message
    )
    # the TXT deployment, whose file it was: named as the LINUX protection's, not "tampered"
    with pytest.raises(IntegrityError, match="it is the file that skrpl records") as refused:
        txt_runs_version(protector, 0)
    assert "tampered" not in str(refused.value)
