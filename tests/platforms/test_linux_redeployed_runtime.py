"""An SkRuntime created before a new version of a model was deployed into its folder: loading
the model afterwards said that the new model file "was tampered or post-processed; re-deploy
the file written by skprotect", while the file is the protector's and only the configuration
this runtime read at creation is out of date. It now says so, and what to do."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tests.models import LIFECYCLE_INPUT as X
from tests.models import lifecycle_mlp, protect_linux_version

from skprotect_pytorch.protect import SkProtectorPyTorch
from skruntime import IntegrityError, SkRuntime


def test_a_runtime_older_than_the_deployment_says_to_create_a_new_one(workdir: Path) -> None:
    protector = SkProtectorPyTorch(application_name="app")
    protect_linux_version(protector, 0, new=True)
    kek = protector.state.kek
    runtime = SkRuntime(protector.outputs_dir, kek=kek)
    runtime.load("m").close()
    protect_linux_version(protector, 1, new=False)
    with pytest.raises(IntegrityError) as err:
        runtime.load("m")
    assert str(err.value) == (
        f"Model file {protector.outputs_dir}/m/onnx/m.onnx does not match the SHA-256 in skrpl "
        "as this SkRuntime read it when it was created, and the file has changed since (a new "
        "version was deployed). Create a new SkRuntime to load the new version."
    )
    with SkRuntime(protector.outputs_dir, kek=kek).load("m") as model:
        expected = lifecycle_mlp(1)(X).detach().numpy()
        np.testing.assert_allclose(model(X.numpy()), expected, rtol=1e-4, atol=1e-5)


def test_a_model_file_replaced_under_an_unchanged_configuration_is_still_tampering(
    workdir: Path,
) -> None:
    protector = SkProtectorPyTorch(application_name="app")
    protect_linux_version(protector, 0, new=True)
    runtime = SkRuntime(protector.outputs_dir, kek=protector.state.kek)
    model_file = protector.outputs_dir / "m" / "onnx" / "m.onnx"
    model_file.write_bytes(model_file.read_bytes() + b"\0")
    with pytest.raises(IntegrityError, match="it was tampered or post-processed; re-deploy"):
        runtime.load("m")
