"""Keeps ``bench/audit_gate.py`` working: its smallest run audits two reference models (A0 only,
one victim epoch) and writes a report naming its command and date."""

from __future__ import annotations

import errno
import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import audit_gate  # noqa: E402
from skprotect_pytorch.audit import SUITE  # noqa: E402


@pytest.fixture(autouse=True)
def _restore_threads():
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


def test_smallest_gate_run_writes_both_reports(tmp_path):
    argv = [
        "--out",
        str(tmp_path),
        "--quick",
        "--models",
        "mlp,gru",
        "--attacks",
        "A0",
        "--budgets",
        "1",
        "--victim-epochs",
        "1",
    ]
    lines: list[str] = []
    result = audit_gate.run_gate(argv, log=lines.append)

    assert set(result.reports) == {"mlp", "gru"} and not result.errors
    assert result.passed, result.to_markdown()
    gru = result.reports["gru"]
    assert gru.settings["model"] == "gru" and gru.model == SUITE["gru"].description
    assert gru.full_accuracy > gru.chance + 0.15  # one epoch of training, then locked
    assert any("total" in line for line in lines) and any("gru: victim" in line for line in lines)

    text = (tmp_path / "audit_gate.md").read_text()
    assert "python bench/audit_gate.py --out" in text and result.date in text
    assert "| mlp |" in text and "| gru |" in text and "### Audit: GRU classifier" in text
    assert text.count("PASS (A1, A2, A3, A4 not run) |") == 2  # A0 alone: the pass says so
    data = json.loads((tmp_path / "audit_gate.json").read_text())
    assert data["passed"] and data["command"] == result.command
    assert {r["variant"] for r in data["models"]["gru"]["rows"]} >= {"null key", "zero key"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit_gate.json", "audit_gate.md"]


def test_an_out_folder_that_cannot_be_made_stops_before_any_work(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(audit_gate, "run_audit", lambda *a, **k: calls.append(a))
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(SystemExit, match=r"--out .*a_file/reports: cannot create it"):
        audit_gate.run_gate(["--out", str(blocker / "reports"), "--quick"], log=lambda s: None)
    assert calls == []


def test_gate_options_are_checked():
    with pytest.raises(SystemExit):
        audit_gate.parse_args(["--out", "x", "--models", "vgg"])
    args = audit_gate.parse_args(["--out", "x"])
    assert args.budgets == audit_gate.GATE_BUDGETS and args.models[0] == "mlp"
    assert args.settings.mix_condition == 16.0  # the default lock
    orthogonal = audit_gate.parse_args(["--out", "x", "--mix-condition", "1"])
    assert orthogonal.settings.mix_condition == 1.0 and orthogonal.settings.mix_sides == "both"
    with pytest.raises(SystemExit):
        audit_gate.parse_args(["--out", "x", "--mix-condition", "0.5"])
    with pytest.raises(SystemExit):
        audit_gate.parse_args(["--out", "x", "--stored-only"])  # needs --cells
    stored = audit_gate.parse_args(["--out", "x", "--cells", "c", "--stored-only"])
    assert stored.stored_only and stored.cells == Path("c")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--seeds", "0"], "AuditConfig.seeds must be a positive integer"),
        (["--seeds", "-1"], "AuditConfig.seeds must be a positive integer"),
        (["--victim-epochs", "0"], "AuditConfig.victim_epochs must be a positive integer"),
        (["--budgets", "1,1"], "AuditConfig.budgets lists 1.0 twice"),
        (["--budgets", "1,x"], "--budgets must be numbers separated by commas"),
        (["--attacks", "A0,A0"], "AuditConfig.attacks lists 'A0' twice"),
        (["--models", "mlp,mlp"], "--models lists a model twice"),
        (["--models", ","], "--models takes suite names"),
        (["--attacks", ""], "AuditConfig.attacks must be a non-empty list"),
    ],
)
def test_bad_values_are_usage_errors_before_any_work(
    tmp_path, monkeypatch, capsys, options, message
):
    """``--seeds 0`` was read as the default, and the other values failed with a traceback
    once the out folder was made; each is now a usage error (exit 2) before any work."""
    calls = []
    monkeypatch.setattr(audit_gate, "run_audit", lambda *a, **k: calls.append(a))
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as stop:
        audit_gate.run_gate(["--out", str(out), "--quick", *options], log=lambda s: None)
    assert stop.value.code == 2 and message in capsys.readouterr().err
    assert calls == [] and not out.exists()


def test_seeds_default_to_the_gates_three_or_quicks_one():
    assert audit_gate.parse_args(["--out", "x"]).configs["mlp"].resolved()[2] == 3
    assert audit_gate.parse_args(["--out", "x", "--quick"]).configs["gru"].resolved()[2] == 1
    two = audit_gate.parse_args(["--out", "x", "--quick", "--seeds", "2", "--models", "cnn"])
    assert list(two.configs) == ["cnn"] and two.configs["cnn"].resolved()[2] == 2


def test_a_full_disk_keeps_the_previous_reports_and_says_what_to_do(tmp_path, monkeypatch):
    (tmp_path / "audit_gate.md").write_text("last run")

    def disk_full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(audit_gate.os, "replace", disk_full)
    result = audit_gate.GateResult(command="python bench/audit_gate.py", date="d", machine="m")
    with pytest.raises(SystemExit, match=r"No space left on device.*--stored-only"):
        result.write(tmp_path)
    assert (tmp_path / "audit_gate.md").read_text() == "last run"
    assert [p.name for p in tmp_path.iterdir()] == ["audit_gate.md"]
