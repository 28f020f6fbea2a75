"""Which modules of an optional extra (``skprotect[protect]``, ``skprotect[licence]``) are
missing, found without importing them: this module imports no torch, so a ``skprotect[runtime]``
install can say what to install instead of failing with a traceback."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable


def missing_modules(names: Iterable[str]) -> list[str]:
    """The top-level modules among ``names`` that cannot be imported here, in the given order.

    >>> missing_modules(["json", "no_such_module_here"])
    ['no_such_module_here']
    """
    return [name for name in names if importlib.util.find_spec(name) is None]
