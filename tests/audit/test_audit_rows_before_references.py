"""A stored A1/A3/A4 row from before the references recorded their unmeasured seeds holds
``"unmeasured": []`` whatever happened (only A2 filled it then): a seed at accuracy exactly 0
in it is judged unmeasured, as it was when stored; a row stored now measures a real 0."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from skprotect_pytorch.audit import _judged
from skprotect_pytorch.audit.report import AuditRow

BASELINES = {"5": {"accuracies": [0.2, 0.2, 0.2], "unmeasured": []}}


def _stored(attack: str) -> dict:
    """A row as a cell stores it (unjudged, through JSON), seed 1 at accuracy 0."""
    row = AuditRow(attack, "some variant", 5.0, 0.1, [0.15, 0.0, 0.15], None)
    return json.loads(json.dumps(asdict(row)))


@pytest.mark.parametrize("attack", ["A1", "A3", "A4"])
def test_a_zero_in_a_row_stored_before_references_named_seeds_is_unmeasured(attack: str) -> None:
    """Was: passed (0.10 under B(x) 0.20), where the code that stored it failed the row."""
    stored = _stored(attack)
    del stored["reference_unmeasured"], stored["control_unmeasured"]  # not in such a row
    row = _judged(stored, BASELINES)
    assert not row.passed
    assert row.reasons == [
        "not measured at seed 1 (accuracy 0): every attempt diverged (NaN or infinite logits; "
        "lower the sweep's learning rates, or scale the inputs, and run again)"
    ]


def test_a_zero_in_a_row_stored_now_is_measured() -> None:
    """A row that records its references' seeds recorded its own: its 0 is a measured 0."""
    assert _judged(_stored("A1"), BASELINES).passed
