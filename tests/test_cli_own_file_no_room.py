"""A command's own file write that finds no room (a protection or an audit writing its outputs
on a full disk) is the command's error, not "the output could not be written" with exit 74:
standard output works. ``stdout_failed`` took every ENOSPC, EDQUOT and EFBIG for it."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from tests.output_group_app import output_group_app
from typer.testing import CliRunner

from skprotect_pytorch.cli import EXIT_UNEXPECTED, _unexpected_errors
from skruntime.cli import EXIT_IO_ERROR, OutputGroup, stdout_failed

WRITER = output_group_app(
    """
def write(path: str) -> None:
    typer.echo("writing")
    with open(path, "wb") as file:
        file.write(b"x" * 100_000)
"""
)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EFBIG])
def test_a_full_disk_under_a_working_stdout_is_not_stdout(code: int) -> None:
    assert not stdout_failed(OSError(code, os.strerror(code)))


def test_audit_says_its_own_full_disk_as_unexpected() -> None:
    """exit 70 naming the error, not 74 "send it to a file or pipe that takes it all"."""
    app = typer.Typer()

    @app.command()
    def audit() -> None:
        with _unexpected_errors("audit", False):
            raise OSError(errno.ENOSPC, "No space left on device")

    done = CliRunner().invoke(app, [])
    assert done.exit_code == EXIT_UNEXPECTED, done.output
    assert "unexpected OSError in skprotect audit" in done.output


@pytest.mark.skipif(sys.platform != "linux", reason="prlimit and RLIMIT_FSIZE (Linux)")
@pytest.mark.parametrize("unbuffered", ["", "1"], ids=["buffered", "unbuffered"])
def test_a_file_over_the_size_limit_is_the_commands_error(tmp_path: Path, unbuffered: str) -> None:
    """The file hits ``RLIMIT_FSIZE`` (EFBIG) while standard output, a pipe, works: the
    OSError reaches the top as the command's (typer's report), standard output is not blamed;
    standard output itself a file at the limit still is (exit 74)."""
    env = {**os.environ, "PYTHONUNBUFFERED": unbuffered, "NO_COLOR": "1"}
    command = ["prlimit", "--fsize=1000", sys.executable, "-c", WRITER]
    written = [*command, "write", str(tmp_path / "big")]
    done = subprocess.run(written, capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode not in (0, EXIT_IO_ERROR), done.stderr
    assert "could not be written" not in done.stderr and "File too large" in done.stderr
    skprotect_help = ["prlimit", "--fsize=100", sys.executable, "-m", "skprotect_pytorch.cli"]
    with open(tmp_path / "stdout.txt", "wb") as out:  # standard output itself at the limit
        done = subprocess.run(
            [*skprotect_help, "--help"], stdout=out, stderr=subprocess.PIPE, text=True, env=env
        )
    assert (done.returncode, done.stderr) == (
        EXIT_IO_ERROR,
        "error: the output could not be written (File too large): send it to a file or pipe "
        "that takes it all (a disk with space left)\n",
    )


def test_output_group_reraises_a_commands_own_full_disk() -> None:
    app = typer.Typer(cls=OutputGroup)

    @app.callback()
    def group() -> None:
        """A group (one command alone is no OutputGroup)."""

    @app.command()
    def protect() -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    done = CliRunner().invoke(app, ["protect"])
    assert isinstance(done.exception, OSError) and done.exception.errno == errno.ENOSPC
