"""What earlier audit versions stored stays usable: the full gate's committed cells (rows stored
before every attack recorded its unmeasured seeds) are read and judged by the rule of their
time, and a part stored as a bare accuracy (before attacks stored a Score per seed) is computed
again instead of being read into code that expects a Score."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import audit_gate
from skprotect_pytorch.audit import _judged
from skprotect_pytorch.audit.cells import PART_FORMAT, CellStore, part

COMMITTED = Path(__file__).resolve().parents[2] / "docs" / "audit" / "cells"


def _row(attack: str, accuracies: list[float], **extra) -> dict:
    row = {
        "attack": attack,
        "variant": "fine-tune, null key",
        "budget": 5.0,
        "accuracy": sum(accuracies) / len(accuracies),
        "accuracies": accuracies,
        "reference": 0.5,
    }
    return {**row, **extra}


def test_a_row_stored_without_unmeasured_fails_on_a_seed_at_accuracy_zero():
    judged = _judged(_row("A1", [0.2, 0.0, 0.3]), {})
    assert not judged.passed
    assert judged.unmeasured == ["seed 1 (accuracy 0)"]
    assert any("not measured at seed 1 (accuracy 0)" in r for r in judged.reasons)
    assert _judged(_row("A3", [0.2, 0.1, 0.3]), {}).passed
    # a row that records its seeds is judged by them: a measured 0 is a measured 0 (an A1 row
    # with "unmeasured" but no "reference_unmeasured" is eb1301f's, whose list was always empty)
    current = _row("A1", [0.2, 0.0, 0.3], unmeasured=[], reference_unmeasured=[])
    assert _judged(current, {}).passed
    assert not _judged(_row("A1", [0.2, 0.0, 0.3], unmeasured=[]), {}).passed


def test_the_committed_gate_cells_are_still_read_and_pass(tmp_path):
    """The documented ``--stored-only`` command over the committed cells (one model and budget,
    4 s): every row was stored without ``unmeasured`` and none has a seed at accuracy 0."""
    before = sorted(p for p in COMMITTED.rglob("*") if p.is_file())
    lines: list[str] = []
    argv = ["--out", str(tmp_path), "--cells", str(COMMITTED), "--models", "gru"]
    result = audit_gate.run_gate([*argv, "--budgets", "5", "--stored-only"], log=lines.append)
    assert result.passed, lines
    rows = result.reports["gru"].rows
    assert {r.attack for r in rows} == {"A0", "A1", "A2", "A3", "A4", "A5"}
    assert all(r.unmeasured == [] for r in rows)
    assert sorted(p for p in COMMITTED.rglob("*") if p.is_file()) == before  # read only


def test_a_part_stored_as_a_bare_accuracy_is_computed_again(tmp_path):
    store = CellStore(tmp_path, {"model": "m"}, log=lambda line: None)
    parts = store.folder / "A1-null@5.parts"
    parts.mkdir(parents=True)
    legacy = io.BytesIO()  # format 1: no "format" field, a bare float
    torch.save({"value": 0.25, "seconds": 3.0, "code": "old"}, legacy)
    (parts / "seed0.pt").write_bytes(legacy.getvalue())
    calls: list[int] = []

    def cell() -> dict:
        def one() -> dict:
            calls.append(0)
            return {"accuracy": 0.5, "measured": True}

        return part("seed0", one)

    assert store.try_get("A1-null@5", cell) == {"accuracy": 0.5, "measured": True}
    assert calls == [0]
    assert "parts_code" not in json.loads((store.folder / "A1-null@5.json").read_text())
    assert PART_FORMAT == 3
