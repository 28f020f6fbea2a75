"""``skprotect`` starts where click is not installed: typer 0.2x vendors click and needs none,
and only the licence server's uvicorn brings it, so a ``skprotect[runtime]`` install has none.
The command line imported click and did not start (``ModuleNotFoundError``)."""

from __future__ import annotations

import subprocess
import sys

import pytest

WITHOUT_CLICK = """
import sys
sys.modules["click"] = None  # an import of click fails, as where it is not installed
from skprotect_pytorch.cli import app
app(prog_name="skprotect")
"""


@pytest.mark.parametrize("args", [["--version"], ["run", "--help"], ["scan"]])
def test_skprotect_needs_no_click(args: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_CLICK, *args], capture_output=True, text=True, timeout=120
    )
    assert "click" not in done.stderr, done.stderr
    assert done.returncode == (2 if args == ["scan"] else 0), done.stderr  # scan: no FILE
