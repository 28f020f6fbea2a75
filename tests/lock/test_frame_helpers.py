"""A lambda that captures the model to read a number from it is refused when a helper it calls
can read the captured model through the lambda's frame (``sys._getframe(1).f_locals``): the
locked copy keeps the lambda, which would run the original's unlocked layer.  Helpers that use
frames inside Python's own modules (``logging``, ``warnings``), or read only their own
variables (``eval``, ``locals()``), do not count."""

from __future__ import annotations

import inspect
import logging
import sys
import warnings

import numpy as np
import pytest
import torch
from tests.assertions import assert_equivalent
from tests.outside_models import Scales
from torch import nn

from skprotect_pytorch.errors import InvalidArgumentError
from skprotect_pytorch.lock import lock_model
from skprotect_pytorch.lock.outside import run_keyed_checked


def _through_getframe(x: torch.Tensor) -> torch.Tensor:
    return sys._getframe(1).f_locals["m"].a(x)


def _through_currentframe(x: torch.Tensor) -> torch.Tensor:
    return inspect.currentframe().f_back.f_locals["m"].a(x)


def _through_stack(x: torch.Tensor) -> torch.Tensor:
    return inspect.stack()[1].frame.f_locals["m"].a(x)


def _through_getargvalues(x: torch.Tensor) -> torch.Tensor:
    return inspect.getargvalues(sys._getframe(1)).locals["m"].a(x)


def _calls_a_reader(x: torch.Tensor) -> torch.Tensor:
    return _reads_two_frames_up(x)


def _reads_two_frames_up(x: torch.Tensor) -> torch.Tensor:
    return sys._getframe(2).f_locals["m"].a(x)


class _Reader:
    """A helper object whose method reads its caller's frame."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return sys._getframe(1).f_locals["m"].a(x)


READER = _Reader()


def _via_a_captured_helper(m):
    helper = _through_getframe
    return lambda x: helper(x) * m.scale


def _lock(model: nn.Module):
    return lock_model(model, layer_filter=lambda n, m: True, secret_rng=np.random.default_rng(0))


@pytest.mark.parametrize(
    "make",
    [
        lambda m: lambda x: _through_getframe(x) * m.scale,
        lambda m: lambda x: _through_currentframe(x) * m.scale,
        lambda m: lambda x: _through_stack(x) * m.scale,
        lambda m: lambda x: _through_getargvalues(x) * m.scale,
        lambda m: lambda x: _calls_a_reader(x) * m.scale,
        lambda m: lambda x: READER(x) * m.scale,
        _via_a_captured_helper,
    ],
    ids=["getframe", "currentframe", "stack", "getargvalues", "two-up", "object", "captured"],
)
def test_a_helper_reading_the_lambdas_frame_is_refused(make) -> None:
    """Each was accepted: the lambda's only named use of ``m`` is ``m.scale``, a number, and
    the locked model's lambda ran the original's unlocked layer ``a`` through the helper (the
    first checked run then refused a parameter the model does not hold, naming no attribute)."""
    model = Scales(make).eval()
    with torch.no_grad():
        model(torch.randn(2, 8))  # the helper does reach the layer
    with pytest.raises(InvalidArgumentError, match=r"'act' are functions .* sys\._getframe"):
        _lock(model)


def _logs(x: torch.Tensor) -> torch.Tensor:
    logging.getLogger(__name__).debug("scaling %s", tuple(x.shape))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warnings.warn("scaling", UserWarning, stacklevel=2)
    return torch.stack([x, x]).mean(0)


def _reads_its_own_variables(x: torch.Tensor) -> torch.Tensor:
    half = 0.5
    assert "half" in locals() and "half" in vars()
    return x * eval("half")


class DescribesItself(Scales):
    """A method of the model's class reads ``vars(self)``: the lambda calls none of them."""

    def extra_repr(self) -> str:
        return f"{len(vars(self))} attributes"


@pytest.mark.parametrize(
    ("model_class", "helper"),
    [(Scales, _logs), (Scales, _reads_its_own_variables), (DescribesItself, lambda x: x)],
    ids=["logs-and-warns", "own-variables", "class-reads-vars"],
)
def test_a_lambda_whose_helpers_read_no_other_frame_is_still_locked(model_class, helper) -> None:
    """``logging`` and ``warnings`` read frames (the caller's name and line), inside Python's
    own code: not followed; ``eval``, ``locals()`` and ``vars()`` in a helper see its own
    variables; a method of the model's class is not the lambda's to call (it reads only
    ``m.scale``): so the lambda is judged by what it names."""
    model = model_class(lambda m: lambda x: helper(x) * m.scale).eval()
    x = torch.randn(2, 8)
    with torch.no_grad():
        expected = model(x)
    locked = _lock(model)
    assert [d.name for d in locked.locked_layers] == ["a", "b"]
    key = torch.from_numpy(locked.layout.static_key())
    with torch.no_grad():
        assert_equivalent(run_keyed_checked("net", locked.keyed, [x.clone(), key]), expected)
