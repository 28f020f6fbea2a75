"""``--help``, ``--version`` and a group without a command, printed into a pipe whose reader has
gone (``skprotect --help | head -1``), are silent and exit 141, as ``ls --help`` and ``git
--help`` do: each printed an ``error:`` line. A command's result on a closed pipe still says
so in one line (the exit code 141 alone does not tell a CI job that the result was cut)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.output_group_app import output_group_app

from skruntime.cli import EXIT_BROKEN_PIPE

BIN = Path(sys.executable).parent
"""Where the console scripts ``skprotect`` and ``sklicense`` are installed."""
SKPROTECT = [["--help"], ["--version"], [], ["run", "--help"], ["scan", "--help"]]
SKLICENSE = [["--help"], ["--version"], [], ["serve", "--help"], ["db", "upgrade", "--help"]]
ENTRY_POINTS = {
    "skprotect": ([str(BIN / "skprotect")], SKPROTECT),
    "python -m skprotect_pytorch.cli": ([sys.executable, "-m", "skprotect_pytorch.cli"], SKPROTECT),
    "sklicense": ([str(BIN / "sklicense")], SKLICENSE),
    "python -m sklicense": ([sys.executable, "-m", "sklicense"], SKLICENSE),
}
"""Every command line entry point, and what it prints while parsing its arguments."""
CASES = {
    " ".join([name, *args]): [*command, *args]
    for name, (command, arguments) in ENTRY_POINTS.items()
    for args in arguments
}
RESULT = output_group_app(
    """
def listing() -> None:
    typer.echo("row")
"""
)


def _into_closed_pipe(command: list[str]) -> tuple[int, str]:
    """``command``'s exit code and stderr, its standard output a pipe closed before it starts."""
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run(
            command,
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "NO_COLOR": "1"},
            timeout=120,
        )
    finally:
        os.close(write)
    return done.returncode, done.stderr


@pytest.mark.parametrize("command", CASES.values(), ids=CASES.keys())
def test_help_and_version_into_a_closed_pipe_are_silent(command: list[str]) -> None:
    if not Path(command[0]).exists():
        pytest.skip(f"{command[0]} is not installed")
    assert _into_closed_pipe(command) == (EXIT_BROKEN_PIPE, "")


def test_a_commands_result_into_a_closed_pipe_says_so() -> None:
    code, errors = _into_closed_pipe([sys.executable, "-c", RESULT, "listing"])
    assert code == EXIT_BROKEN_PIPE
    assert errors.startswith("error: the output was closed (broken pipe) before all was printed")
    assert _into_closed_pipe([sys.executable, "-c", RESULT, "listing", "--help"]) == (
        EXIT_BROKEN_PIPE,
        "",
    )
