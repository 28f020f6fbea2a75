"""``run_audit`` checks its ``AuditConfig`` again: a field assigned after construction skipped
the checks, so ``config.seeds = 0`` ran 3 seeds (the default) and ``config.budgets = (500,)``
failed in numpy ("Cannot take a larger sample than population") after the victim's training."""

from __future__ import annotations

import pytest

import skprotect_pytorch.audit as audit
from skprotect_pytorch.audit import AuditConfig, run_audit
from skprotect_pytorch.errors import InvalidArgumentError


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("seeds", 0, r"AuditConfig\.seeds must be a positive integer"),
        ("seeds", 10**12, r"AuditConfig\.seeds must be at most 100"),
        ("budgets", (500,), r"every AuditConfig\.budgets entry is a percentage .* 500"),
        ("attacks", ("A9",), r"AuditConfig\.attacks has unknown attacks \['A9'\]"),
    ],
)
def test_a_field_assigned_after_construction_is_checked_before_any_training(
    field, value, message, monkeypatch
):
    def no_training(*args, **kwargs):
        raise AssertionError("the audit started before checking its config")

    monkeypatch.setattr(audit, "_run", no_training)
    config = AuditConfig(quick=True, attacks=("A1",), budgets=(1,))
    setattr(config, field, value)
    with pytest.raises(InvalidArgumentError, match=message):
        run_audit(config, log=lambda line: None)


def test_the_callers_config_is_left_as_it_is(monkeypatch):
    """The check runs on a copy: the caller's object is not normalised behind its back."""
    seen = []
    monkeypatch.setattr(audit, "_run", lambda config, start, log: seen.append(config))
    config = AuditConfig(quick=True, budgets=(1,))
    config.budgets = [5]
    run_audit(config, log=lambda line: None)
    assert seen[0].budgets == (5.0,) and config.budgets == [5]
