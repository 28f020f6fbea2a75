"""``skprotect run -i x.npy -o x.npy``: the outputs replaced the input file (a (2, 6) input
came back as the (2, 5) output, exit code 0). The output is now refused before any work when it
is the same file as an input, whatever the spelling: another path, a symbolic or a hard link."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from skprotect_pytorch.cli import app

#: How the output names the input file ``x.npy`` (or ``x.npz``) in folder ``d``.
SPELLINGS: dict[str, Callable[[Path, Path], Path]] = {
    "same path": lambda d, x: x,
    "another spelling": lambda d, x: d / "sub" / ".." / x.name,
    "symbolic link": lambda d, x: _made(d / f"link{x.suffix}", lambda p: p.symlink_to(x)),
    "hard link": lambda d, x: _made(d / f"hard{x.suffix}", lambda p: os.link(x, p)),
}


def _made(path: Path, make: Callable[[Path], None]) -> Path:
    make(path)
    return path


def _run(tmp_path: Path, inputs: list[Path], output: Path) -> tuple[int, str]:
    """Run on a folder with no configuration: the refusal must come first, before any work."""
    args = ["run", str(tmp_path / "missing_outputs"), "m", "-o", str(output)]
    for path in inputs:
        args += ["-i", str(path)]
    result = CliRunner().invoke(app, args)
    return result.exit_code, result.stderr


@pytest.mark.parametrize("spelling", SPELLINGS)
@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_an_output_that_is_an_input_is_refused(tmp_path: Path, spelling: str, suffix: str) -> None:
    (tmp_path / "sub").mkdir()
    other, given = tmp_path / "other.npy", tmp_path / f"x{suffix}"
    np.save(other, np.ones(3, np.float32))
    if suffix == ".npy":
        np.save(given, np.zeros((2, 6), np.float32))
        inputs = [other, given]  # the second input: every input is compared
    else:
        np.savez(given, x=np.zeros((2, 6), np.float32))
        inputs = [given]
    before = given.read_bytes()
    output = SPELLINGS[spelling](tmp_path, given)
    code, stderr = _run(tmp_path, inputs, output)
    assert code == 2, stderr
    assert stderr == (
        f"error: --output {output} is the same file as --input {given}: the outputs would "
        "replace the inputs. Pass another --output path.\n"
    )
    assert given.read_bytes() == before


def test_an_output_beside_the_input_goes_on(tmp_path: Path) -> None:
    """Another file (existing or not) passes this check: the run fails later, on the folder."""
    given = tmp_path / "x.npy"
    np.save(given, np.zeros((2, 6), np.float32))
    np.save(tmp_path / "y.npy", np.zeros(1, np.float32))
    for output in (tmp_path / "y.npy", tmp_path / "new.npy"):
        code, stderr = _run(tmp_path, [given], output)
        assert code == 6, stderr
        assert "does not exist" in stderr
