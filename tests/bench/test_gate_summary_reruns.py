"""``bench/gate_summary.py`` drops a model's ERROR row when a later run holds rows of that
model (the rerun replaced the failed run) and keeps it, dated, when the failure is the newest."""

from __future__ import annotations

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


def _run(path: Path, date: str, passed: bool) -> Path:
    """A full gate run of the gru on ``date``: its rows, or stopped on it."""
    models = {"gru": _model("gru", [5.0], FULL)} if passed else {}
    errors = {} if passed else {"gru": OOM}
    path.write_text(json.dumps({"date": date, "models": models, "errors": errors}))
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
