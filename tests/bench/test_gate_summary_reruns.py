"""``bench/gate_summary.py`` drops a model's ERROR row when later runs hold rows of that model
at every budget of the failed run (the reruns replaced it) and keeps it, dated, when the
failure is the newest or a budget was not run again."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(Path(__file__).parent))

from test_gate_summary import A0, A3, A4, _model, _row  # noqa: E402

import gate_summary  # noqa: E402

FULL = [
    A0,
    _row("A1", "fine-tune, null key", 5.0, 0.11, reference=0.5),
    _row("A2", "key learning, joint weights", 5.0, 0.12, reference=0.5),
    A3,
    A4,
]
OOM = "RuntimeError: CUDA out of memory"


def _run(path: Path, date: str, passed: bool, budgets: tuple[float, ...] = (5.0,)) -> Path:
    """A full gate run of the gru at ``budgets`` on ``date``: its rows, or stopped on it."""
    models = {"gru": _model("gru", list(budgets), FULL)} if passed else {}
    errors = {} if passed else {"gru": OOM}
    asked = ",".join(f"{b:g}" for b in budgets)
    command = f"python bench/audit_gate.py --out runs --models gru --budgets {asked}"
    report = {"command": command, "date": date, "models": models, "errors": errors}
    path.write_text(json.dumps(report))
    return path


def _summary(capsys: pytest.CaptureFixture[str], *paths: Path) -> list[str]:
    gate_summary.main([str(path) for path in paths])
    return capsys.readouterr().out.splitlines()[2:]


def test_a_rerun_that_passed_replaces_the_failed_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Was: a "pass" row and an ERROR row for the gru, whose failed run was run again."""
    failed = _run(tmp_path / "a.json", "2026-12-05 10:00 UTC", passed=False)
    rerun = _run(tmp_path / "b.json", "2026-12-05 14:00 UTC", passed=True)
    for order in ((failed, rerun), (rerun, failed)):  # the dates decide, not the order given
        rows = _summary(capsys, *order)
        assert len(rows) == 1 and rows[0].startswith("| gru | 5 |")
        assert rows[0].endswith("| pass | pass |")


def test_a_failure_after_the_rows_is_shown_dated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    passed = _run(tmp_path / "a.json", "2026-12-05 14:00 UTC", passed=True)
    failed = _run(tmp_path / "b.json", "2026-12-05 18:00 UTC", passed=False)
    rows = _summary(capsys, passed, failed)
    assert rows[0].endswith("| pass | pass |")
    assert rows[1].endswith(f"| ERROR: {OOM} ({failed}, 2026-12-05 18:00 UTC) |")


def test_an_undated_failure_stays_shown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without a date in its report, nothing says the failure is older than the rows."""
    failed = _run(tmp_path / "a.json", "2026-12-05 10:00 UTC", passed=False)
    report = json.loads(failed.read_text())
    del report["date"]
    failed.write_text(json.dumps(report))
    rows = _summary(capsys, failed, _run(tmp_path / "b.json", "2026-12-05 14:00 UTC", True))
    assert len(rows) == 2 and rows[1].endswith(f"| ERROR: {OOM} ({failed}, ?) |")


def test_a_rerun_at_some_budgets_leaves_the_others_failed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Was: the failure at 5 and 25 % hidden by a rerun at 5 % alone, the 25 % never run."""
    failed = _run(tmp_path / "a.json", "2026-12-05 10:00 UTC", passed=False, budgets=(5.0, 25.0))
    rerun = _run(tmp_path / "b.json", "2026-12-05 14:00 UTC", passed=True)
    rows = _summary(capsys, failed, rerun)
    assert len(rows) == 2 and rows[0].endswith("| pass | pass |")
    assert rows[1].endswith(f"| ERROR: {OOM} ({failed}, 2026-12-05 10:00 UTC) |")
    both = _run(tmp_path / "c.json", "2026-12-05 18:00 UTC", passed=True, budgets=(25.0,))
    assert len(_summary(capsys, failed, rerun, both)) == 2  # 5 and 25 %, no ERROR


def test_a_run_without_budgets_was_asked_the_gates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A command without ``--budgets`` ran the gate's budgets (``bench/audit_gate.py``'s)."""
    failed = _run(tmp_path / "a.json", "2026-12-05 10:00 UTC", passed=False)
    report = json.loads(failed.read_text())
    report["command"] = "python bench/audit_gate.py --out runs --models gru"
    failed.write_text(json.dumps(report))
    assert gate_summary.GATE_BUDGETS == importlib.import_module("audit_gate").GATE_BUDGETS
    rerun = _run(tmp_path / "b.json", "2026-12-05 14:00 UTC", passed=True)
    assert _summary(capsys, failed, rerun)[-1].startswith("| gru | – |")
    everywhere = _run(tmp_path / "c.json", "2026-12-05 14:00 UTC", True, (1.0, 10.0, 25.0))
    assert len(_summary(capsys, failed, rerun, everywhere)) == 4
