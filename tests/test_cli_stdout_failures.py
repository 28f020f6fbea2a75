"""Standard output failing while ``skprotect`` or ``sklicense`` prints (``--help``,
``--version``, a listing): one line on stderr and its own exit code.

``--help > /dev/full`` printed typer's traceback of 90 lines (exit 1). A closed pipe is
tests/test_cli_help_closed_pipe.py's: silent for ``--help | head -1``, one line for a result.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from skruntime.cli import EXIT_IO_ERROR, stdout_failed

SKPROTECT = [sys.executable, "-m", "skprotect_pytorch.cli"]
SKLICENSE = [sys.executable, "-c", "from sklicense.cli import main; main()"]
COMMANDS = {
    "skprotect --help": [*SKPROTECT, "--help"],
    "skprotect --version": [*SKPROTECT, "--version"],
    "skprotect run --help": [*SKPROTECT, "run", "--help"],
    "skprotect (no command)": SKPROTECT,
    "sklicense --help": [*SKLICENSE, "--help"],
    "sklicense --version": [*SKLICENSE, "--version"],
    "sklicense db upgrade --help": [*SKLICENSE, "db", "upgrade", "--help"],
}
NO_ROOM = (
    "the output could not be written (No space left on device): send it to a file or pipe "
    "that takes it all (a disk with space left)\n"
)
pytestmark = pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")


def _label(command: list[str]) -> str:
    """sklicense's errors are ``Error:`` lines, skprotect's ``error:`` lines."""
    return "Error: " if command[: len(SKLICENSE)] == SKLICENSE else "error: "


@pytest.mark.parametrize("command", COMMANDS.values(), ids=COMMANDS.keys())
@pytest.mark.parametrize("unbuffered", ["", "1"], ids=["buffered", "unbuffered"])
def test_a_full_standard_output_is_one_line(command: list[str], unbuffered: str) -> None:
    """With ``PYTHONUNBUFFERED`` (containers set it) no data waits in the buffer to fail again."""
    env = {**os.environ, "PYTHONUNBUFFERED": unbuffered, "NO_COLOR": "1"}
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            command, stdout=full, stderr=subprocess.PIPE, text=True, env=env, timeout=120
        )
    assert (done.returncode, done.stderr) == (EXIT_IO_ERROR, _label(command) + NO_ROOM)


def test_other_errors_are_not_taken_for_standard_output() -> None:
    """A command's own error (a file it may not read) keeps its message: stdout works."""
    assert not stdout_failed(PermissionError(errno.EACCES, "Permission denied"))
    assert not stdout_failed(RuntimeError("boom"))
    assert stdout_failed(BrokenPipeError(errno.EPIPE, "Broken pipe"))


def test_run_says_its_summary_could_not_be_printed(
    workdir: Path, protect_linear: Callable[..., Path]
) -> None:
    """``skprotect run ... > /dev/full``: the ``--output`` file is written, then the summary
    fails (a traceback before), said in one line."""
    import numpy as np

    protect_linear("app", "mlp", (6, 5), batch=1)
    np.save("x.npy", np.ones((1, 6), np.float32))
    run = [*SKPROTECT, "run", "outputs/app", "mlp", "-i", "x.npy", "-o", "y.npy", "--static-key"]
    with open("/dev/full", "w") as full:
        done = subprocess.run(run, stdout=full, stderr=subprocess.PIPE, text=True, timeout=300)
    assert (done.returncode, done.stderr) == (EXIT_IO_ERROR, "error: " + NO_ROOM)
    assert np.load("y.npy").shape == (1, 5)
