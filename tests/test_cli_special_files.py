"""``skprotect audit --json/--markdown`` and ``skprotect export-kek`` given a symbolic link, a
named pipe or a device: the report is written through a link and into a pipe or device, as
``skprotect run --output`` writes (``--json /dev/stdout``); the key-encryption key, a secret
file of mode 0600, is never written over a pipe or device. Both commands replaced such a file
with a regular one: run as root, ``--markdown /dev/null`` or ``export-kek /dev/null`` replaced
the system's ``/dev/null`` (here a named pipe in a temporary folder stands for it)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from skprotect_pytorch import audit as audit_pkg
from skprotect_pytorch import cli
from skprotect_pytorch.audit.report import AuditReport, AuditRow
from skprotect_pytorch.state import ProtectionState


@pytest.fixture
def fake_audit(monkeypatch: pytest.MonkeyPatch) -> None:
    """A passing one-row report instead of hours of training."""

    def fake_run_audit(config: object, log: object = print) -> AuditReport:
        row = AuditRow("A0", "null key", None, 0.1, [0.1], 0.1).judge()
        return AuditReport({}, "m", 0.9, 0.1, {}, {}, [row], [])

    monkeypatch.setattr(audit_pkg, "run_audit", fake_run_audit)


def _read_in_background(fifo: Path) -> tuple[threading.Thread, list[bytes]]:
    """A reader of ``fifo``, as a shell's ``cat fifo`` would be; what it read lands in the list."""
    read: list[bytes] = []

    def reader() -> None:
        with open(fifo, "rb") as pipe:
            read.append(pipe.read())

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    return thread, read


def test_an_audit_report_is_written_through_a_link_and_into_a_pipe(
    workdir: Path, fake_audit: None
) -> None:
    (workdir / "report.md").write_text("last week's report")
    (workdir / "latest.md").symlink_to("report.md")
    os.mkfifo(workdir / "json_pipe")
    thread, read = _read_in_background(workdir / "json_pipe")
    try:
        result = CliRunner().invoke(
            cli.app, ["audit", "--quick", "--json", "json_pipe", "--markdown", "latest.md"]
        )
    finally:
        if thread.is_alive():  # the command never opened the pipe: end the reader
            os.close(os.open(workdir / "json_pipe", os.O_WRONLY | os.O_NONBLOCK))
        thread.join(20)
    assert result.exit_code == 0, result.output
    assert (workdir / "json_pipe").is_fifo()
    assert b'"passed": true' in read[0]
    assert (workdir / "latest.md").is_symlink()
    assert "| A0 | null key |" in (workdir / "report.md").read_text()


@pytest.mark.parametrize("given", ["pipe", "link_to_pipe"])
def test_export_kek_refuses_a_named_pipe_or_device(workdir: Path, given: str) -> None:
    ProtectionState.open("app")
    os.mkfifo(workdir / "pipe")
    (workdir / "link_to_pipe").symlink_to("pipe")
    result = CliRunner().invoke(cli.app, ["export-kek", given, "--application-name", "app"])
    assert result.exit_code == 1
    assert result.output == (
        f"error: {given} is a named pipe (FIFO), not a file; pass a file name for the key "
        "(mode 0600).\n"
    )
    assert (workdir / "pipe").is_fifo() and (workdir / "link_to_pipe").is_symlink()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["pipe.onnx", "--original", "state.pt"], "error: pipe.onnx is a named pipe (FIFO), not a"),
        (["model.onnx", "--original", "pipe.onnx"], "error: --original pipe.onnx is a named pipe"),
    ],
)
def test_scan_names_a_named_pipe_as_such(workdir: Path, args: list[str], message: str) -> None:
    """Both said the pipe did not exist ("check the path")."""
    import torch

    torch.save({"w": torch.randn(16, 16)}, "state.pt")
    Path("model.onnx").write_bytes(b"not read")
    os.mkfifo("pipe.onnx")
    result = CliRunner().invoke(cli.app, ["scan", *args])
    assert result.exit_code == 2
    assert result.output.startswith(message), result.output


FAKE_AUDIT = """
import sys
from skprotect_pytorch import audit, cli
from skprotect_pytorch.audit.report import AuditReport, AuditRow

def fake_run_audit(config, log=print):
    row = AuditRow("A0", "null key", None, 0.1, [0.1], 0.1).judge()
    return AuditReport({}, "m", 0.9, 0.1, {}, {}, [row], [])

audit.run_audit = fake_run_audit
sys.argv = ["skprotect", "audit", "--quick", "--json", "stdout.json"]
cli.app()
"""


def test_an_audit_report_to_dev_stdout_reaches_a_pipe(workdir: Path) -> None:
    """Into a pipe, /dev/stdout resolves to /proc/PID/fd/pipe:[N], which names no file: the
    report was computed, then not written ("No such file or directory", exit code 2). A link
    of its own stands for /dev/stdout (a link to /proc/self/fd/1 too), so that a regression
    replaces that link, not the system's /dev/stdout."""
    import json
    import subprocess
    import sys

    (workdir / "stdout.json").symlink_to("/proc/self/fd/1")
    done = subprocess.run(
        [sys.executable, "-c", FAKE_AUDIT], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout[done.stdout.index("\n{") :])["passed"] is True
