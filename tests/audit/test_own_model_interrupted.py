"""Ctrl-C during ``skprotect audit`` exited 130 without a word: it writes no report (none that
looks complete), and the user was not told so, nor that the finished cells of ``--cells`` are
kept for the next run. Interrupted in a real process: ``KeyboardInterrupt`` reaches the command
line as Ctrl-C's does."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

SPEC_FILE = """
import os
import signal

import numpy as np
from torch import nn

from skprotect_pytorch.audit import model_spec, task_from_arrays

ARMED = False


def factory():
    if ARMED:  # the audit trains the twin: Ctrl-C now
        os.kill(os.getpid(), signal.SIGINT)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


rng = np.random.default_rng(0)
labels = np.arange(40) % 2
task = task_from_arrays(rng.normal(size=(40, 4)), labels, rng.normal(size=(40, 4)), labels)
spec = model_spec("mine", factory, task, victim=factory(), epochs=1)
ARMED = True
"""


def _interrupted(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "my_audit.py").write_text(SPEC_FILE)
    command = [sys.executable, "-m", "skprotect_pytorch.cli", "audit", "--model"]
    options = ["--quick", "--budgets", "5", "--attacks", "A0", "--json", "audit.json"]
    return subprocess.run(
        [*command, "my_audit.py:spec", *options, *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as in a terminal
    )


@pytest.mark.parametrize(
    ("args", "said"),
    [
        ((), "error: interrupted: the audit stopped, no report written\n"),
        (
            ("--cells", "cells"),
            "error: interrupted: the audit stopped, no report written; the finished cells are "
            "kept in cells: run the same command again to go on\n",
        ),
    ],
)
def test_ctrl_c_says_no_report_was_written(
    tmp_path: Path, args: tuple[str, ...], said: str
) -> None:
    done = _interrupted(tmp_path, *args)
    assert done.returncode == 130, done.stderr
    assert done.stderr.endswith(said), done.stderr
    assert done.stdout == ""  # no report printed
    assert not (tmp_path / "audit.json").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file
