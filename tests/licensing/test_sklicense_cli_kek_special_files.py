"""``sklicense app create/import-kek --kek-file`` opens only a regular file: a named pipe given
by mistake blocked the command for ever (``open()`` waits for a writer), and a device was read
as a file too large."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes (POSIX)")
def test_a_named_pipe_is_refused_at_once(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "kek.b64")
    database = f"sqlite:///{tmp_path / 'sklicense.db'}"
    args = ["app", "import-kek", "a1", "--kek-file", "kek.b64", "--database-url", database]
    done = subprocess.run(  # a subprocess: before the fix the open never returned
        [sys.executable, "-c", "from sklicense.cli import main; main()", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_COLOR": "1"},
        timeout=60,
    )
    assert (done.returncode, done.stderr) == (
        1,
        "Error: --kek-file kek.b64 cannot be read (kek.b64 is a named pipe (FIFO), not a regular "
        "file): pass the file `skprotect export-kek` wrote\n",
    )
