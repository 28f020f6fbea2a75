"""``skprotect run --output`` through a link to the process's standard output (``y.npy ->
/dev/stdout`` or ``/proc/self/fd/1``) when that is a pipe: the link resolves to
``/proc/PID/fd/pipe:[N]``, which names no file, so the output was refused at the end ("could not
write --output ... No such file or directory", exit code 1) after the model had run."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np

WRITE = """
from pathlib import Path
import numpy as np
from skruntime.cli import write_outputs

write_outputs(Path("y.npy"), [np.arange(3.0)], ["y"])
from skruntime.cli import output_problem  # the check run makes before the model runs

assert output_problem(Path("y.npy")) is None, output_problem(Path("y.npy"))
"""


def test_an_output_linked_to_a_piped_stdout_is_written_into_the_pipe(tmp_path: Path) -> None:
    (tmp_path / "y.npy").symlink_to("/proc/self/fd/1")
    done = subprocess.run(
        [sys.executable, "-c", WRITE], cwd=tmp_path, capture_output=True, timeout=120
    )
    assert done.returncode == 0, done.stderr.decode()
    np.testing.assert_array_equal(np.load(io.BytesIO(done.stdout)), np.arange(3.0))
    assert (tmp_path / "y.npy").is_symlink()
