"""``skprotect audit``: its options reach the audit and bad ones are refused before it runs; a
``--json``/``--markdown`` path that cannot take the report is refused before the hours of work,
and a write that fails at the end loses neither the report (it is on screen) nor the file a
previous run wrote."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from skprotect_pytorch import audit as audit_pkg
from skprotect_pytorch import cli
from skprotect_pytorch.audit.report import AuditReport, AuditRow

runs: list[object] = []


@pytest.fixture(autouse=True)
def fake_audit(monkeypatch):
    """A passing one-row report instead of hours of training."""
    runs.clear()

    def fake_run_audit(config, log=print):
        runs.append(config)
        row = AuditRow("A0", "null key", None, 0.1, [0.1], 0.1).judge()
        return AuditReport({}, "m", 0.9, 0.1, {}, {}, [row], [])

    monkeypatch.setattr(audit_pkg, "run_audit", fake_run_audit)


def _audit(*args: str):
    return CliRunner().invoke(cli.app, ["audit", "--quick", *args])


@pytest.mark.parametrize(
    ("option", "where", "says"),
    [
        ("--json", "missing/report.json", "does not exist; create it"),
        ("--markdown", ".", "is a folder; pass a file name"),
    ],
)
def test_an_unusable_report_path_is_refused_before_the_audit_runs(
    tmp_path: Path, option: str, where: str, says: str
) -> None:
    result = _audit(option, str(tmp_path / where))
    assert result.exit_code == 2
    assert f"error: {option} {tmp_path / where}" in result.output and says in result.output
    assert runs == []


def test_a_failed_write_keeps_the_previous_file_and_the_report_on_screen(
    tmp_path: Path, monkeypatch
) -> None:
    previous = tmp_path / "report.json"
    previous.write_text('{"passed": true, "from": "last week"}')

    def disk_full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)  # what atomic_write_bytes moves with
    result = _audit("--json", str(previous), "--markdown", str(tmp_path / "report.md"))
    assert result.exit_code == 2, result.output
    assert "| A0 | null key |" in result.output  # the report itself was printed
    assert f"could not write --json {previous} (No space left on device)" in result.output
    assert json.loads(previous.read_text()) == {"passed": True, "from": "last week"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]  # no temporary left


def test_reports_are_written_whole(tmp_path: Path) -> None:
    result = _audit("--json", str(tmp_path / "a.json"), "--markdown", str(tmp_path / "a.md"))
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "a.json").read_text())["passed"] is True
    assert "| A0 | null key |" in (tmp_path / "a.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "a.md"]


def test_attacks_and_victim_epochs_reach_the_audit() -> None:
    result = _audit("--attacks", "A0, A2", "--victim-epochs", "3")
    assert result.exit_code == 0, result.output
    assert tuple(runs[-1].attacks) == ("A0", "A2") and runs[-1].victim_epochs == 3
    assert _audit().exit_code == 0 and tuple(runs[-1].attacks) == audit_pkg.ATTACKS


@pytest.mark.parametrize(
    "args", [["--attacks", "A0,A9"], ["--attacks", ","], ["--victim-epochs", "0"], ["--seeds", "0"]]
)
def test_bad_attacks_or_epochs_are_refused_before_the_audit_runs(args: list[str]) -> None:
    result = _audit(*args)
    assert result.exit_code == 2 and runs == []
    if args[0] == "--attacks":
        assert "--attacks takes names from A0, A1, A2, A3, A4, A5" in result.output


def test_a_run_of_some_attacks_says_which_gated_ones_its_pass_leaves_out(monkeypatch) -> None:
    """A pass of A0 and A5 alone judged no attack A1–A4: the report, its JSON and the CLI's
    stderr say so instead of a bare "gate: PASS"."""

    def only_a0_a5(config, log=print):
        row = AuditRow("A0", "null key", None, 0.1, [0.1], 0.1).judge()
        return AuditReport({"attacks": list(config.attacks)}, "m", 0.9, 0.1, {}, {}, [row], [])

    monkeypatch.setattr(audit_pkg, "run_audit", only_a0_a5)
    result = CliRunner().invoke(cli.app, ["audit", "--quick", "--attacks", "A0,A5"])
    assert result.exit_code == 0  # nothing failed; what ran is named
    assert "gate: **PASS** (A1, A2, A3, A4 not run)" in result.stdout
    caveat = "A1, A2, A3, A4 not run: the gate verdict covers A0 and gate 4 only"
    assert f"caveat: {caveat}" in result.stderr

    report = only_a0_a5(audit_pkg.AuditConfig(attacks=("A5",)))
    assert report.gated_not_asked == ["A0", "A1", "A2", "A3", "A4"]
    assert "the gate verdict covers gate 4 only" in json.loads(report.to_json())["caveats"][0]
    full = only_a0_a5(audit_pkg.AuditConfig())
    assert full.caveats == [] and "not run)" not in full.to_markdown()


@pytest.mark.parametrize("option", ["--json", "--markdown"])
def test_a_report_path_naming_the_spec_file_is_refused(tmp_path: Path, option: str) -> None:
    """``--markdown my_audit.py`` replaced the user's spec file with the report at the end."""
    spec = tmp_path / "my_audit.py"
    spec.write_text("raise SystemExit('not to be loaded')\n")
    os.link(spec, tmp_path / "other_name.py")  # another spelling of the same file
    for path in (spec, tmp_path / "." / "my_audit.py", tmp_path / "other_name.py"):
        result = _audit("--model", f"{spec}:spec", option, str(path))
        assert result.exit_code == 2, result.output
        assert f"is the --model file {spec}" in result.output
    assert spec.read_text() == "raise SystemExit('not to be loaded')\n" and runs == []


def test_json_and_markdown_hard_linked_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("")
    os.link(tmp_path / "a.md", tmp_path / "b.json")
    result = _audit("--json", str(tmp_path / "b.json"), "--markdown", str(tmp_path / "a.md"))
    assert result.exit_code == 2 and "one report would overwrite the other" in result.output
