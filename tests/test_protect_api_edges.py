"""Less common but legitimate sequences of protector calls, found by the API edge review: a
production update that keeps a test build's key, configuration operations where nothing was
protected."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from tests.assertions import assert_equivalent, assert_garbage
from torch import nn

from skprotect_pytorch import Customer
from skprotect_pytorch.errors import ConfigurationError
from skprotect_pytorch.protect import SkProtectorPyTorch

EF = SkProtectorPyTorch.ExportFormat
EP = SkProtectorPyTorch.ExportPlatform


def _run_with_key(model_file: Path, x: torch.Tensor, key: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(model_file))
    return session.run(None, {"input.1": x.numpy(), "key_vector": key})[0]


def test_an_update_keeping_a_test_builds_key_warns(workdir: Path) -> None:
    """A test build's static key (test_key=True, handed to testers) unlocked the production
    update of the same model without a word: the update keeps the deployed keys. The update
    now warns and names rotate_keys, after which that key gives garbage."""
    mlp = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    x = torch.randn(2, 8)
    expected = mlp(x).detach().numpy()
    protector = SkProtectorPyTorch(application_name="app")
    args = (mlp, "m", [x])
    kwargs = {
        "model_export_formats": EF.ONNX,
        "deployment_platform": EP.LINUX,
    }
    with pytest.warns(UserWarning, match="holds the key of model 'm' in plain files"):
        protector.protect_new_model(*args, test_key=True, **kwargs)
    folder = workdir / "outputs" / "app" / "m" / "onnx"
    tester_key = np.loadtxt(folder / "key_vector_inv_m.txt", dtype=np.float32)

    with pytest.warns(
        UserWarning,
        match=r"'m' had a static test key \(m/onnx/key_vector_inv_m\.txt.*rotate_keys=True",
    ):
        protector.protect_updated_model(*args, **kwargs)
    assert_equivalent(_run_with_key(folder / "m.onnx", x, tester_key), expected)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        protector.protect_updated_model(*args, rotate_keys=True, **kwargs)
    assert_garbage(_run_with_key(folder / "m.onnx", x, tester_key), expected)


@pytest.mark.parametrize("operation", ["migrate_configuration", "update_customer"])
def test_a_configuration_operation_where_nothing_was_protected_says_so(
    workdir: Path, operation: str
) -> None:
    """Where no configuration of either platform is (a typo in the application name, another
    folder), the missing configuration is said, as docs/api.md documents: a StateError about
    the master secret came first, which the docs keep for an application that has one."""
    protector = SkProtectorPyTorch(application_name="app")
    calls = {
        "migrate_configuration": lambda: protector.migrate_configuration(2, EP.LINUX),
        "update_customer": lambda: protector.update_customer(Customer(2), EP.TXT),
    }
    with pytest.raises(ConfigurationError, match=rf"^{operation}: there is no configuration file "):
        calls[operation]()
    assert not (workdir / ".skprotect_private" / "app").exists()


def test_a_damaged_test_key_file_does_not_stop_an_update(workdir: Path) -> None:
    """The look for a kept test key read the plain key-params file whole with json.loads: one
    nested too deeply (200 kB of brackets) raised RecursionError before any work, though a
    LINUX update reads only its mev_* key files. It is read as the runtime reads it now."""
    mlp = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    protector = SkProtectorPyTorch(application_name="app")
    args = (mlp, "m", [torch.randn(2, 8)])
    kwargs = {"model_export_formats": EF.ONNX, "deployment_platform": EP.LINUX}
    with pytest.warns(UserWarning, match="in plain files"):
        protector.protect_new_model(*args, test_key=True, **kwargs)
    params = workdir / "outputs" / "app" / "m" / "onnx" / "key_params_m.json"
    params.write_bytes(b"[" * 100_000 + b"]" * 100_000)
    assert protector.protect_updated_model(*args, **kwargs).key_epoch == 0
