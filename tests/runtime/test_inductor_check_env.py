"""AOTInductor's own input check, turned on by ``AOTI_RUNTIME_CHECK_INPUTS`` in the environment,
refuses inputs the compiled code computes correctly: a failed call says so.

The package is simulated: a real one reads the variable once per process, at its first call,
and would keep the check on for the other tests."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from skruntime.backends import inductor
from skruntime.backends.base import BackendOptions, ModelFile
from skruntime.backends.inductor import INPUTS_METADATA, InductorBackend
from skruntime.errors import BackendError

REFUSAL = "input_handles[0]: dim value is too small at 0, expected it to be >= 2, but got: 1"


class _CheckingPackage:
    """A loaded package with a dynamic batch, refusing a batch of 1 as AOTInductor's check
    does (its compile assumed a batch of at least 2)."""

    def get_metadata(self) -> dict[str, str]:
        specs = [
            {"shape": [None, 6], "dtype": "float32", "name": "x"},
            {"shape": [4], "dtype": "float32", "name": "key", "key": True},
        ]
        return {INPUTS_METADATA: json.dumps(specs)}

    def __call__(self, *tensors: Any) -> Any:
        raise RuntimeError(REFUSAL)


@pytest.fixture
def backend(monkeypatch: pytest.MonkeyPatch) -> InductorBackend:
    monkeypatch.setattr(inductor, "_load_bytes", lambda *args: _CheckingPackage())
    data = os.urandom(32)  # bytes of their own: no package of another test is shared
    model = ModelFile(Path("net.pt2"), data, hashlib.sha256(data).hexdigest())
    return InductorBackend(model, BackendOptions())


INPUTS = [np.zeros((1, 6), np.float32), np.zeros(4, np.float32)]


@pytest.mark.parametrize("value", ["1", "", "yes"])
def test_a_refusal_under_aoti_runtime_check_inputs_names_the_variable(
    backend: InductorBackend, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """The refusal said "Check the input shapes and dtypes against the model's inputs", for an
    input that matches them."""
    monkeypatch.setenv("AOTI_RUNTIME_CHECK_INPUTS", value)
    with pytest.raises(BackendError) as caught:
        backend.run(INPUTS)
    assert REFUSAL in str(caught.value)
    assert f"AOTI_RUNTIME_CHECK_INPUTS={value!r} is set in this process's environment" in str(
        caught.value
    )
    assert str(caught.value).endswith("Unset it and start the process again.")


@pytest.mark.parametrize("value", [None, "0"])
def test_without_the_variable_a_failure_points_to_the_inputs(
    backend: InductorBackend, monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv("AOTI_RUNTIME_CHECK_INPUTS", raising=False)
    else:
        monkeypatch.setenv("AOTI_RUNTIME_CHECK_INPUTS", value)
    with pytest.raises(BackendError) as caught:
        backend.run(INPUTS)
    assert str(caught.value).endswith(
        "Check the input shapes and dtypes against the model's inputs."
    )
