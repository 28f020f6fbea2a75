"""An untrained victim (``net = MyNet()`` with its ``load_state_dict`` forgotten) scored 31.8 %
against chance 27.4 % and B(5 %) 78.2 %, and the audit said **PASS** without a word: every
accuracy bound lay above the unlocked model itself, so it would have passed a thief who
recovered the model entirely. A caveat now names each bound that does."""

from __future__ import annotations

import numpy as np
import pytest
from torch import nn

from skprotect_pytorch.audit import AuditConfig, run_audit, task_from_arrays
from skprotect_pytorch.audit.custom import model_spec
from skprotect_pytorch.audit.report import AuditReport, AuditRow

A0_LEVEL = (
    "the unlocked model scores 28.00 %, not more than 2 points above chance (27.00 %): A0's "
    "accuracy bound passes even the true key, so only the key checks (permutations, cosines) "
    "judge it; audit the trained model (are its weights loaded?)"
)


def _report(full: float, baselines: dict[str, float]) -> AuditReport:
    row = AuditRow("A0", "null key", None, 0.2, [0.2], 0.27).judge()
    return AuditReport({}, "m", full, 0.27, baselines, {}, [row], [])


def report_caveat_count(full: float, baselines: dict[str, float]) -> int:
    """How many caveats a report of a victim at ``full`` and these B(x) carries."""
    return len(_report(full, baselines).caveats)


def test_a_victim_at_chance_is_named_for_a0_and_each_level_budget() -> None:
    report = _report(0.28, {"1": 0.2, "5": 0.6, "25": 0.9})
    assert report.caveats == [
        A0_LEVEL,
        "B(5 %) 60.00 %, B(25 %) 90.00 % are not more than 1 point under the unlocked model's "
        "28.00 %: the accuracy bound there passes even the unlocked model itself, so only the key "
        "checks (permutations, cosines; A1 has none) judge those rows; audit the trained model "
        "(are its weights loaded?), or give smaller budgets",
    ]
    assert f"- **caveat**: {A0_LEVEL}\n" in report.to_markdown()


def test_a_bound_one_point_under_the_victim_is_named_and_one_more_is_not() -> None:
    assert report_caveat_count(0.9, {"25": 0.89}) == 1  # a recovered model scores 0.9 ≤ 0.9
    assert report_caveat_count(0.9, {"25": 0.8899}) == 0


def test_a_trained_victim_has_none() -> None:
    assert _report(0.9, {"1": 0.5, "5": 0.8}).caveats == []


@pytest.mark.usefixtures("one_thread")
def test_an_audit_of_an_untrained_victim_says_so() -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(6, 4))
    x, xt = rng.normal(size=(400, 6)), rng.normal(size=(400, 6))
    task = task_from_arrays(x, (x @ w).argmax(1), xt, (xt @ w).argmax(1))

    def net() -> nn.Module:
        return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4))

    spec = model_spec("untrained", net, task, victim=net(), epochs=1)  # never trained
    config = AuditConfig(model=spec, quick=True, budgets=(50,), attacks=("A1",), seeds=1)
    report = run_audit(config, log=lambda _line: None)
    assert report.baselines["50"] > report.full_accuracy + 0.2, report.to_markdown()
    assert any(c.startswith("B(50 %) ") for c in report.caveats), report.caveats
