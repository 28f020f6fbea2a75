"""Budgets that differ only past the 6 significant digits that name them in the report and the
cells are refused with both values named, not as one budget "listed twice"."""

from __future__ import annotations

import pytest

from skprotect_pytorch.audit import AuditConfig
from skprotect_pytorch.errors import InvalidArgumentError


@pytest.mark.parametrize(
    ("budgets", "message"),
    [
        ((1, 1.0000001), r"lists 1 and 1\.0000001, which the report and the cells both name '1'"),
        ((0.1, 5, 0.10000001), r"lists 0\.1 and 0\.10000001, .* both name '0\.1'"),
        ((5, 1, 5), r"budgets lists 5 twice; give each once"),
    ],
)
def test_budgets_named_alike_are_refused_naming_both(budgets: tuple, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        AuditConfig(budgets=budgets)
