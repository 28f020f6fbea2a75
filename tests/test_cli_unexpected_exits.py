"""Exit codes of ``skprotect scan`` and ``audit`` that a CI job can trust, and the options they
and ``export-kek`` refuse by name.

An unexpected error or a closed standard output ended scan and audit with a traceback and exit
code 1, which those commands use for "a weight was found" and "the gate failed"; ``--cells ''``
(typer reads it as ``.``) kept cells in the current folder; ``export-kek --application-name ''``
named the Python field ``application_name``; and SIGTERM during a file's atomic write left its
hidden temporary file beside the target.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from skprotect_pytorch.cli import EXIT_UNEXPECTED, app
from skprotect_pytorch.state import ProtectionState
from skruntime.cli import EXIT_BROKEN_PIPE

AUDIT = ["audit", "--quick", "--attacks", "A0", "--budgets", "5"]


def _boom(*args: object, **kwargs: object) -> None:
    raise RuntimeError("boom")


@pytest.fixture
def scanned(workdir: Path) -> list[str]:
    """``scan`` arguments for a small ONNX file that holds no weight of the original."""
    torch.manual_seed(0)
    torch.save({"w": torch.randn(16, 16)}, "original.pt")
    model = nn.Sequential(nn.Linear(16, 16)).eval()
    torch.onnx.export(model, (torch.randn(1, 16),), "m.onnx", dynamo=False)
    return ["scan", "m.onnx", "--original", "original.pt"]


@pytest.mark.parametrize("debug", [False, True], ids=["plain", "debug"])
def test_a_crash_of_scan_is_not_a_weight_found(
    scanned: list[str], monkeypatch: pytest.MonkeyPatch, debug: bool
) -> None:
    monkeypatch.setattr("skprotect_pytorch.audit.constants.find_weight_leaks", _boom)
    result = CliRunner().invoke(app, scanned + (["--debug"] if debug else []))
    assert result.exit_code == EXIT_UNEXPECTED == 70
    line = (
        "error: unexpected RuntimeError in skprotect scan: boom. Rerun with --debug for the "
        "traceback, and report it unless it names something to fix\n"
    )
    assert result.output.endswith(line)
    assert ("Traceback (most recent call last)" in result.output) is debug


def test_a_crash_of_audit_is_not_a_failed_gate(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("skprotect_pytorch.audit.run_audit", _boom)
    result = CliRunner().invoke(app, AUDIT)
    assert result.exit_code == EXIT_UNEXPECTED
    assert result.output == (
        "error: unexpected RuntimeError in skprotect audit: boom. Rerun with --debug for the "
        "traceback, and report it unless it names something to fix\n"
    )


def test_a_closed_output_of_scan_is_not_a_weight_found(scanned: list[str]) -> None:
    """The reader of a pipe went away (``| head -c0``): exit 141, with one line on stderr and
    no "Exception ignored" warning at exit."""
    scan = subprocess.Popen(
        [sys.executable, "-m", "skprotect_pytorch.cli", *scanned],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    scan.stdout.close()
    errors = scan.stderr.read()
    assert scan.wait(timeout=300) == EXIT_BROKEN_PIPE == 141, errors
    assert errors.endswith(
        "error: the output was closed (broken pipe) before all was printed; the exit code says "
        "nothing of the scan's result: read its output whole, or save it to a file\n"
    )
    assert "Traceback" not in errors and "Exception ignored" not in errors


@pytest.mark.parametrize(
    ("option", "wanted"),
    [("--cells", "a folder"), ("--json", "a file name"), ("--markdown", "a file name")],
)
def test_audit_refuses_an_empty_path(workdir: Path, option: str, wanted: str) -> None:
    """As ``skprotect run`` does: typer reads '' as '.', and ``--cells ''`` kept the cells in
    the current folder (``--json ''`` was refused as the folder '.')."""
    cells = [] if option == "--cells" else ["--cells", "cells"]
    result = CliRunner().invoke(app, [*AUDIT, "--stored-only", *cells, option, ""])
    assert result.exit_code == 2
    assert result.output == f"error: {option}: the path is empty (or '.'); pass {wanted}.\n"
    assert list(workdir.iterdir()) == []


def test_export_kek_names_the_option_of_a_bad_application_name(workdir: Path) -> None:
    ProtectionState.open("default_app")
    result = CliRunner().invoke(app, ["export-kek", "kek.b64", "--application-name", ""])
    assert result.exit_code == 2
    text = " ".join(result.output.replace("│", " ").split())
    assert "Invalid value for '--application-name': must be 1-128 characters" in text
    assert "but got ''" in text and "application_name" not in text
    assert not (workdir / "kek.b64").exists()


SIGTERM_MID_WRITE = textwrap.dedent(
    """
    import os, signal, time
    import skruntime.config as config
    from skprotect_pytorch.cli import app

    write_all = config.write_all
    def write_then_terminated(fd, data):  # as a `kill` while the file is being written
        write_all(fd, data)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the signal arrives here
    config.write_all = write_then_terminated
    app(prog_name="skprotect")
    """
)


def test_sigterm_during_a_write_leaves_no_temporary_file(workdir: Path) -> None:
    """SIGTERM ended the process at once: ``.kek.b64.XXXX.tmp`` stayed beside the target. Now
    it is cleaned up as on Ctrl-C, and the exit code is 143 (128 + SIGTERM)."""
    ProtectionState.open("default_app")
    env = {**os.environ, "SKPROTECT_STATE_DIR": str(workdir / ".skprotect_private")}
    done = subprocess.run(
        [sys.executable, "-c", SIGTERM_MID_WRITE, "export-kek", "kek.b64"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 128 + signal.SIGTERM == 143, done.stderr
    assert sorted(p.name for p in workdir.iterdir()) == [".skprotect_private"]
