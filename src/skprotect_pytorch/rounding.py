"""How far float32 rounding alone takes a model's outputs, for the protector's checks.

A locked model computes the original's function with other float32 operations (mixing, key
scales), so its outputs round differently. Against outputs of ordinary size the difference
stays far under the checks' tolerance (1e-4 relative). Where the outputs cancel to near zero
(two nearly equal branches subtracted), the original's own float32 outputs are already that far
from the exact ones, and so is any other order of the same operations. There a check that
fails is decided against the original computed in float64: the locked outputs pass when they
are within :data:`AMPLIFICATION` times the original's own float32 error of it.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from .logs import get_logger

RTOL = 1e-4
"""The checks' tolerance: locked and exported outputs against the original's, relative."""

AMPLIFICATION = 100
"""How many times the original's own float32 error (against float64) a locked model's may be,
where the outputs cancel. Measured on 30 cancelling MLPs (two nearly equal Linear heads
subtracted, widths 64-1,024, 1-3 hidden layers): the lock's float32 operations take its outputs
15-54 times as far from float64 as the original's own (median 22)."""

LIMIT = 1e-2
"""The most a check widened for rounding accepts (1 %): beyond it the outputs on these
examples are noise, and a model that differs by a real error is not told apart from them."""

_FLOOR = 1e-7
"""The original's own error counted at least as this (float32's half-ulp is 6e-8): with no
cancellation, AMPLIFICATION times it stays under :data:`RTOL`."""


def within_rounding(got: float, own: float) -> bool:
    """Whether an error ``got`` against the float64 outputs is float32 rounding: at most
    :data:`AMPLIFICATION` times ``own``, the original's own float32 error against them, and
    at most :data:`LIMIT`."""
    return got <= min(AMPLIFICATION * max(own, _FLOOR), LIMIT)


class ExactOutputs:
    """The original model's outputs computed in float64, on first need only (a check that fails
    at :data:`RTOL`): it copies the model in float64, twice its float32 size, for two runs per
    input set (which must agree: :meth:`__call__`). ``model`` is the user's own, which the
    protection never changes."""

    def __init__(self, model: nn.Module, flatten: Callable[[object], list[np.ndarray]]) -> None:
        self._model = model
        self._flatten = flatten
        self._runs: list[tuple[list[np.ndarray | torch.Tensor], list[np.ndarray] | None]] = []

    def __call__(self, inputs: Sequence[np.ndarray | torch.Tensor]) -> list[np.ndarray] | None:
        """The float64 outputs on ``inputs`` (the model's own, no key); ``None`` where the model
        does not run in float64 (a forward that fixes its dtypes) or gives other outputs when
        run again (a random forward, whose own error would have opened the widening to any
        output within :data:`LIMIT`): then nothing is widened."""
        for given, outputs in self._runs:
            if len(given) == len(inputs) and all(map(operator.is_, given, inputs)):
                return outputs
        outputs = self._run(inputs)
        self._runs.append((list(inputs), outputs))
        return outputs

    def _run(self, inputs: Sequence[np.ndarray | torch.Tensor]) -> list[np.ndarray] | None:
        tensors = [torch.from_numpy(x) if isinstance(x, np.ndarray) else x for x in inputs]
        wide = [t.detach().cpu().double() if t.is_floating_point() else t.cpu() for t in tensors]
        try:
            model = copy.deepcopy(self._model).to("cpu", torch.float64).eval()
            with torch.no_grad():
                outputs = self._flatten(model(*(t.clone() for t in wide)))
                again = self._flatten(model(*(t.clone() for t in wide)))
        except Exception as err:  # the float32 check's refusal stands, said as it was
            get_logger().debug("The model does not run in float64 (%s)", err)
            return None
        if not all(map(_same, outputs, again)):  # a random forward: its error is no rounding
            get_logger().debug("The model's float64 outputs differ from one run to the next")
            return None
        return outputs


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two runs' outputs are equal: floats up to float64 rounding (1e-9 of their largest
    magnitude: a reduction's order may change with threads), NaN where the other is NaN."""
    if a.shape != b.shape or a.dtype.kind not in "fc":
        return a.shape == b.shape and np.array_equal(a, b)
    finite = np.abs(a[np.isfinite(a)])
    atol = 1e-9 * float(finite.max()) if finite.size else 0.0
    return bool(np.allclose(a, b, rtol=0.0, atol=atol, equal_nan=True))
