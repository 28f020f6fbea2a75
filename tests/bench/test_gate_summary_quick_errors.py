"""``bench/gate_summary.py`` leaves a ``--quick`` run out unless ``--with-quick``: the models
it stopped on too, not only its rows."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import gate_summary  # noqa: E402


def _stopped_quick_run(tmp_path: Path) -> Path:
    """A ``--quick`` gate run that stopped on its only model."""
    path = tmp_path / "quick.json"
    report = {
        "command": "python bench/audit_gate.py --out /tmp/q --quick --models cnn --budgets 1",
        "date": "2026-12-07 02:00 UTC",
        "models": {},
        "errors": {"cnn": "RuntimeError: out of memory"},
    }
    path.write_text(json.dumps(report))
    return path


def test_a_quick_runs_error_is_left_out_unless_asked_for(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Was: an "ERROR" row for cnn, from a run the summary says it does not count."""
    path = _stopped_quick_run(tmp_path)
    with pytest.raises(SystemExit, match="no full-sweep run in these reports"):
        gate_summary.main([str(path)])
    gate_summary.main(["--with-quick", str(path)])
    out = capsys.readouterr().out
    assert "| cnn | – |" in out and "ERROR: RuntimeError: out of memory" in out
