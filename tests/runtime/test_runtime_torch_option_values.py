"""The torch backends' session options are flags: a value other than True or False is refused
before any file is read (the text "false" turned ``optimize_for_inference`` on, changing the
outputs' rounding, and ``run_single_threaded`` on, serialising every call)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from skruntime.backends.base import BackendOptions
from skruntime.backends.inductor import InductorBackend
from skruntime.backends.torchscript import TorchScriptBackend
from skruntime.errors import BackendError


@pytest.mark.parametrize("value", ["false", "no", 0, None, [False]])
@pytest.mark.parametrize(
    ("backend", "kind", "option"),
    [
        (TorchScriptBackend, "TorchScript", "optimize_for_inference"),
        (InductorBackend, "AOTInductor", "run_single_threaded"),
    ],
)
def test_a_flag_that_is_not_a_bool_is_refused_before_reading(
    tmp_path: Path, backend: type, kind: str, option: str, value: object
) -> None:
    options = BackendOptions(session_options={option: value})
    with pytest.raises(BackendError) as info:
        backend.check_options(options)
    assert str(info.value) == (
        f"{kind} session option {option} must be True or False, but got the "
        f"{type(value).__name__} {value!r}."
    )
    with pytest.raises(BackendError, match="must be True or False"):
        backend(tmp_path / "missing.pt", options)  # refused before the file is read


@pytest.mark.parametrize("value", [True, False, np.bool_(True)])
def test_a_bool_flag_is_accepted(value: object) -> None:
    TorchScriptBackend.check_options(
        BackendOptions(session_options={"optimize_for_inference": value})
    )
