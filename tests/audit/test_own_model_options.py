"""``skprotect audit --budgets 5%``: the option reads "% of the training data", and the
refusal said only "must be numbers"; it now says to leave the '%' out."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from skprotect_pytorch.cli import app


@pytest.mark.parametrize("budgets", ["5%", "1,5 %"])
def test_a_budget_with_a_percent_sign_is_told_to_drop_it(budgets: str) -> None:
    result = CliRunner().invoke(app, ["audit", "--quick", "--budgets", budgets])
    assert result.exit_code == 2
    assert result.output == (
        "error: --budgets must be numbers separated by commas (percentages without '%', e.g. "
        f"1,5), got '{budgets}'\n"
    )


def test_other_text_keeps_the_plain_message() -> None:
    result = CliRunner().invoke(app, ["audit", "--quick", "--budgets", "five"])
    assert result.exit_code == 2
    assert result.output == "error: --budgets must be numbers separated by commas, got 'five'\n"
