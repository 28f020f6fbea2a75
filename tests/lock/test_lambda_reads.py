"""A lambda that captures the model only to read numbers from it is accepted, but not one that
can read the captured model without naming it (``eval``, ``locals()``, a frame's
``f_locals``): the locked copy keeps the lambda, which would call the unlocked layer."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from tests.outside_models import Scales

from skprotect_pytorch.errors import InvalidArgumentError
from skprotect_pytorch.lock import lock_model


@pytest.mark.parametrize(
    "make",
    [
        lambda m: lambda x: eval("m.a")(x) * m.scale,
        lambda m: lambda x: locals()["m"].a(x) * m.scale,
        lambda m: lambda x: vars()["m"].a(x) * m.scale,
        lambda m: lambda x: sys._getframe().f_locals["m"].a(x) * m.scale,
    ],
    ids=["eval", "locals", "vars", "frame"],
)
def test_a_lambda_that_reads_the_captured_model_without_naming_it_is_refused(make) -> None:
    """It was accepted: its only named use of ``m`` is ``m.scale``, a number, and the locked
    model's lambda called the original's unlocked layer ``a`` through ``eval``."""
    model = Scales(make)
    with torch.no_grad():
        model(torch.randn(2, 8))  # the lambda does run the layer
    with pytest.raises(InvalidArgumentError, match="'act' are functions"):
        lock_model(model, layer_filter=lambda n, m: True, secret_rng=np.random.default_rng(0))


def test_a_lambda_reading_a_number_through_the_model_is_still_accepted() -> None:
    model = Scales(lambda m: lambda x: x * m.scale)
    locked = lock_model(model, layer_filter=lambda n, m: True, secret_rng=np.random.default_rng(0))
    assert [d.name for d in locked.locked_layers] == ["a", "b"]
