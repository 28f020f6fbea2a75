"""Checks of the audit's public arguments, so a wrong value is refused up front with what to
pass instead of being read as a default (``seeds=0``) or failing hours later."""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from numbers import Integral, Real

from skruntime.backends.base import threads_problem

from ..errors import InvalidArgumentError


def require_positive(value: object, name: str, kinds: tuple[type, ...], what: str) -> None:
    """Refuse ``value`` unless it is a finite number of ``kinds`` above zero (never a bool)."""
    if (
        not isinstance(value, kinds)
        or isinstance(value, bool)
        or not math.isfinite(value)  # type: ignore[arg-type]
        or not value > 0  # type: ignore[operator]
    ):
        raise InvalidArgumentError(f"{name} must be a positive {what}, but is {value!r}.")


INTEGER = (Integral,)
NUMBER = (Real,)
"""The ``kinds`` to pass: numpy scalars count, as Python's ``int`` and ``float`` do."""


def optional_positive_int(value: object, name: str) -> int | None:
    """``None`` (the default) or an integer ≥ 1, as a Python int."""
    if value is None:
        return None
    require_positive(value, name, INTEGER, "integer (or None for the default)")
    return int(value)  # type: ignore[call-overload]


MAX_SEEDS = 100
"""Upper bound of the seeds per budget: each seed draws its own budget and retrains every
learner of every attack (the full gate's 3 seeds are hours per model and budget on two cores),
so 100 is over 30 times the gate's statistics, while 10**12 built a list of a trillion seeds
(MemoryError) and 10**6 ran for ever, both after the victim's training."""


def optional_seed_count(value: object, name: str) -> int | None:
    """``None`` (the default) or a seed count from 1 to :data:`MAX_SEEDS`, as a Python int."""
    count = optional_positive_int(value, name)
    if count is not None and count > MAX_SEEDS:
        raise InvalidArgumentError(
            f"{name} must be at most {MAX_SEEDS}, but is {count}: each seed retrains every attack "
            f"at every budget (the full gate uses 3); give 1 to {MAX_SEEDS}, or None for the "
            "default."
        )
    return count


def optional_threads(value: object, name: str) -> int | None:
    """``None`` (torch's setting stays) or a thread count by the runtime's rule (1 to
    ``MAX_THREADS``), as a Python int: 100,000 threads crashed torch in its first matrix
    product."""
    if value is None:
        return None
    if problem := threads_problem(value):
        raise InvalidArgumentError(f"{name} {problem}; None leaves torch's setting.")
    return operator.index(value)  # type: ignore[arg-type]


def seed(value: object, name: str, upper: int = 2**63 - 1) -> int:
    """An integer seed in [0, upper], as a Python int."""
    if not isinstance(value, Integral) or isinstance(value, bool) or not 0 <= value <= upper:
        raise InvalidArgumentError(f"{name} must be an integer in [0, {upper}], but is {value!r}.")
    return int(value)


def sequence_of(value: object, name: str, what: str) -> tuple:
    """``value`` as a non-empty tuple: a list or tuple of ``what`` (a bare string is refused,
    it would be read letter by letter)."""
    if isinstance(value, str | bytes) or not isinstance(value, Sequence) or not value:
        raise InvalidArgumentError(
            f"{name} must be a non-empty list or tuple of {what}, but is {value!r}."
        )
    return tuple(value)


def require_unique(values: tuple, name: str, key=str) -> None:
    """Refuse repeated entries (by ``key``, what names them in the report and the cells): each
    would be computed and reported twice, or one reported as the other."""
    seen: dict = {}
    for v in values:
        if key(v) not in seen:
            seen[key(v)] = v
            continue
        first = seen[key(v)]
        if first == v:
            raise InvalidArgumentError(f"{name} lists {v!r} twice; give each once.")
        raise InvalidArgumentError(  # 1 and 1.0000001: one cell name, "1"
            f"{name} lists {first!r} and {v!r}, which the report and the cells both name "
            f"{key(v)!r}; give entries that differ within 6 significant digits."
        )
