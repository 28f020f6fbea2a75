"""A budget smaller than the number of classes is raised to it (``Task.budget``): on a small
training split of your own, ``--budgets 1`` of 50 samples gave the thief 4 samples (8 %), and
the report said only "x % = 1" next to a B(x) trained on them. The report now says how many
samples each budget drew, and a caveat names every budget the audit raised."""

from __future__ import annotations

import json

import numpy as np
import pytest
from torch import nn

from skprotect_pytorch.audit import AuditConfig, run_audit, task_from_arrays
from skprotect_pytorch.audit.custom import model_spec
from skprotect_pytorch.audit.report import AuditReport

RAISED = (
    "1 % of the 50 training samples is 0.5 samples, but the thief is never given fewer samples "
    "than classes: the rows at 1 % and B(1 %) measure 4 samples, 8 % of the training split; "
    "give a larger training split or a larger budget"
)


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4))


def _task():
    rng = np.random.default_rng(0)
    x, xt = rng.normal(size=(50, 6)), rng.normal(size=(400, 6))
    return task_from_arrays(x, np.arange(50) % 4, xt, np.arange(400) % 4)


@pytest.mark.usefixtures("one_thread")
def test_the_report_says_how_many_samples_each_budget_drew() -> None:
    spec = model_spec("small", _net, _task(), victim=_net(), epochs=1)
    config = AuditConfig(model=spec, quick=True, budgets=(1, 50), attacks=("A1",), seeds=1)
    report = run_audit(config, log=lambda _line: None)

    assert report.budget_samples == {"1": 4, "50": 25}
    assert report.train_samples == 50
    assert RAISED in report.caveats
    assert not any(c.startswith("50 % of") for c in report.caveats)  # 25 samples: as asked
    text = report.to_markdown()
    assert "- thief's samples per budget (of 50 training): 1 % → 4, 50 % → 25\n" in text
    assert f"- **caveat**: {RAISED}\n" in text
    data = json.loads(report.to_json())
    assert data["budget_samples"] == {"1": 4, "50": 25}
    assert RAISED in data["caveats"]


def test_each_drawn_budget_has_the_size_the_report_gives() -> None:
    task = _task()
    assert [len(task.budget(x, seed=0)[1]) for x in (1, 50)] == [
        task.budget_size(1),
        task.budget_size(50),
    ]


def test_a_report_without_budgets_has_no_such_line_or_caveat() -> None:
    """An A0-only run (no budget drawn) and a report from before the field say nothing."""
    for report in (
        AuditReport({}, "m", 0.9, 0.1, {}, {}, [], [], train_samples=50),
        AuditReport({}, "m", 0.9, 0.1, {}, {}, [], [], budget_samples={"1": 4}),
    ):
        assert report.caveats == []
        assert "samples per budget" not in report.to_markdown()
