"""Keeps ``bench/gate_summary.py`` right: it merges split runs, leaves quick runs out, refuses
an attack stored twice, names what is missing, reads a failed row or an unlocked weight as a
failure, and ``docs/security.md`` shows the table the committed reports give."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import gate_summary  # noqa: E402


def _row(attack: str, variant: str, budget: float | None, accuracy: float, **extra) -> dict:
    row = {
        "attack": attack,
        "variant": variant,
        "budget": budget,
        "accuracy": accuracy,
        "reference": extra.pop("reference", 0.1),
        "perm_recovered": None,
        "perm_chance": None,
        "cos_excess": None,
        "control": None,
        "passed": True,
    }
    return {**row, **extra}


def _model(name: str, budgets: list[float], rows: list[dict], quick: bool = False, **extra) -> dict:
    return {
        "settings": {"model": name, "budgets": budgets, "quick": quick},
        "chance": 0.1,
        "baselines": {f"{b:g}": 0.5 for b in budgets},
        "rows": rows,
        "not_run": extra.pop("not_run", []),
        "stored_weights": extra.pop("stored_weights", [{"passed": True}]),
        **extra,
    }


def _write(path: Path, *models: dict, batch: bool = False) -> Path:
    report = {"date": "2026-12-05 10:00 UTC", "models": {m["settings"]["model"]: m for m in models}}
    data = {"runs": [{"tag": "t", "report": report}]} if batch else report
    path.write_text(json.dumps(data))
    return path


A0 = _row("A0", "random key", None, 0.118, perm_recovered=0.02, perm_chance=0.01, cos_excess=-0.1)
A3 = _row("A3", "data-free statistics + fine-tune", 5.0, 0.30, reference=0.5, cos_excess=0.02)
A4 = _row(
    "A4", "activation matching to own reference + fine-tune", 5.0, 0.42, reference=0.5,
    control=0.61, perm_recovered=0.03, perm_chance=0.01,
)  # fmt: skip


def test_split_runs_merge_into_one_row_with_the_best_attack(tmp_path: Path) -> None:
    first = _write(tmp_path / "a.json", _model("gru", [5.0], [A0, A3]))
    second = _write(tmp_path / "b.json", _model("gru", [5.0], [A4]), batch=True)
    a1 = _row("A1", "fine-tune, null key", 5.0, 0.11, reference=0.5)
    a2 = _row("A2", "key learning, joint weights", 5.0, 0.12, reference=0.5)
    third = _write(tmp_path / "c.json", _model("gru", [5.0], [a1, a2]))
    table = gate_summary.table(gate_summary.collect([first, second, third]))
    assert table.splitlines()[2] == (
        "| gru | 5 | 50.00 | A4, activation matching | 42.00 | 8.0 | 11.80 (10.00) | 3.00 × "
        "| 0.020 | pass | pass |"
    )


def test_missing_attacks_make_the_row_incomplete(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.json", _model("mlp", [5.0], [A0, A3]))
    row = gate_summary.table(gate_summary.collect([path])).splitlines()[2]
    assert row.endswith("| incomplete: A1, A2, A4 |")


def test_a_failed_row_or_stored_weight_fails_the_row(tmp_path: Path) -> None:
    failed = {**A3, "passed": False}
    path = _write(tmp_path / "a.json", _model("mlp", [5.0], [A0, failed]))
    assert gate_summary.table(gate_summary.collect([path])).splitlines()[2].endswith("| FAIL |")
    bad_weights = _model("cnn", [5.0], [A0, A3], stored_weights=[{"passed": False}])
    path = _write(tmp_path / "b.json", bad_weights)
    assert "| FAIL | FAIL |" in gate_summary.table(gate_summary.collect([path]))
    unlocked = [{"name": "embed.weight", "shape": [20, 16], "reason": "Embedding ..."}]
    path = _write(tmp_path / "c.json", _model("cnn", [5.0], [A0, A3], plaintext_weights=unlocked))
    assert "| FAIL | FAIL |" in gate_summary.table(gate_summary.collect([path]))


def test_quick_runs_are_left_out_unless_asked_for(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.json", _model("mlp", [5.0], [A0, A3], quick=True))
    assert gate_summary.collect([path]) == {}
    assert ("mlp", 5.0) in gate_summary.collect([path], with_quick=True)
    with pytest.raises(SystemExit, match="no full-sweep run"):
        gate_summary.main([str(path)])


def test_an_attack_stored_twice_is_refused(tmp_path: Path) -> None:
    first = _write(tmp_path / "a.json", _model("mlp", [5.0], [A0, A3]))
    second = _write(tmp_path / "b.json", _model("mlp", [5.0], [A3]))
    with pytest.raises(SystemExit, match=r"A3 .* of the mlp at 5 % is in .*a\.json.*b\.json"):
        gate_summary.collect([first, second])


def test_runs_with_other_settings_are_not_merged(tmp_path: Path) -> None:
    """A balanced-lock run of A3 and a strong-lock run of the rest made one "pass" row."""
    strong = _model("mlp", [5.0], [A0, A4])
    strong["settings"].update(seeds=3, lock_settings={"mix_sides": "both"})
    balanced = _model("mlp", [5.0], [A3])
    balanced["settings"].update(seeds=3, lock_settings={"mix_sides": "smaller"})
    first, second = _write(tmp_path / "a.json", strong), _write(tmp_path / "b.json", balanced)
    with pytest.raises(SystemExit, match=r"mlp at 5 % ran with other settings .*lock_settings"):
        gate_summary.collect([first, second])
    same = _model("mlp", [5.0], [A3])
    same["settings"].update(seeds=3, lock_settings={"mix_sides": "both"})
    merged = gate_summary.collect([first, _write(tmp_path / "c.json", same)])
    assert len(merged["mlp", 5.0].rows) == 3


def test_what_was_not_run_counts_at_its_own_budget_only(tmp_path: Path) -> None:
    """A stored-only report missing its 25 % cells marked its complete 5 % row incomplete."""
    a1 = _row("A1", "fine-tune, null key", 5.0, 0.11, reference=0.5)
    a2 = _row("A2", "key learning, joint weights", 5.0, 0.12, reference=0.5)
    a4 = {**A4, "budget": 5.0}
    missing = ["B@25 (not computed yet)", "A3@25 (not computed yet)"]
    path = _write(
        tmp_path / "a.json", _model("gru", [5.0, 25.0], [A0, a1, a2, A3, a4], not_run=missing)
    )
    lines = gate_summary.table(gate_summary.collect([path])).splitlines()
    assert lines[2].startswith("| gru | 5 |") and lines[2].endswith("| pass | pass |")
    assert lines[3].startswith("| gru | 25 |") and "B@25 (not computed yet)" in lines[3]
    assert gate_summary._not_run_at(["A0 (not computed yet)"], 5.0) == ["A0 (not computed yet)"]


def test_unreadable_files_say_what_to_pass(tmp_path: Path) -> None:
    (tmp_path / "torn.json").write_text("{")
    with pytest.raises(SystemExit, match="not a readable JSON report"):
        gate_summary.collect([tmp_path / "torn.json"])
    not_a_report = "not a report of bench/audit_gate.py"
    (tmp_path / "other.json").write_text(json.dumps({"rows": []}))
    with pytest.raises(SystemExit, match=not_a_report):
        gate_summary.collect([tmp_path / "other.json"])
    # each stopped the table in an AttributeError or KeyError naming no file
    no_settings = {"models": {"mlp": {"chance": 0.1, "baselines": {}, "rows": []}}}
    for shape in ([1, 2], {"runs": [1]}, {"runs": []}, no_settings):
        (tmp_path / "shape.json").write_text(json.dumps(shape))
        with pytest.raises(SystemExit, match=rf"shape\.json: {not_a_report}"):
            gate_summary.collect([tmp_path / "shape.json"])


def test_security_doc_shows_the_committed_reports_summary() -> None:
    doc = (ROOT / "docs" / "security.md").read_text()
    command = re.search(r"python bench/gate_summary\.py ([^\n`]+)", doc)
    assert command, "docs/security.md names the gate_summary command"
    paths = [path for pattern in command.group(1).split() for path in sorted(ROOT.glob(pattern))]
    assert gate_summary.table(gate_summary.collect(paths)) in doc, (
        f"regenerate the table: {command.group(0)}"
    )


def test_a_model_a_run_stopped_on_gets_an_error_row(tmp_path, capsys):
    """The gate's JSON keeps a model that stopped with an error under ``errors``, not
    ``models``: the summary listed the other models alone, every row "pass"."""
    report = {
        "date": "2026-12-05 10:00 UTC",
        "models": {"mlp": _model("mlp", [5.0], [A0, A3, A4])},
        "errors": {"gru": "StateError: Audit cell x.json holds ...; delete it"},
    }
    path = tmp_path / "g.json"
    path.write_text(json.dumps({"runs": [{"report": report}]}))
    gate_summary.main([str(path)])
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("| gru | – | – |")
    assert last.endswith(f"| ERROR: StateError: Audit cell x.json holds ...; delete it ({path}, "
                         "2026-12-05 10:00 UTC) |")  # fmt: skip
    only_errors = tmp_path / "e.json"
    only_errors.write_text(json.dumps({**report, "models": {}}))
    gate_summary.main([str(only_errors)])  # not "no full-sweep run in these reports"
    assert "| gru |" in capsys.readouterr().out
