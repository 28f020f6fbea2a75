"""The quickstart checks ``TMPDIR`` before the training: Python falls back to /tmp where it is
missing, but torch unpacks an AOTInductor package there to load it and does not, so the
protection's check of the ``inductor_cpu`` file failed after the training ("Error generating
temporary directory: No such file or directory", then "re-export the model")."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from skprotect_pytorch import quickstart
from skprotect_pytorch.cli import app
from skprotect_pytorch.errors import SkProtectError


@pytest.mark.parametrize(
    ("make", "problem"),
    [(lambda path: None, "does not exist"), (lambda path: path.write_text("x"), "is not a folder")],
    ids=["missing", "a file"],
)
def test_a_tmpdir_torch_cannot_use_fails_before_the_training(
    untrained: Path, monkeypatch: pytest.MonkeyPatch, make, problem: str
) -> None:
    tmpdir = untrained / "tmp"
    make(tmpdir)
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    with pytest.raises(SkProtectError, match=re.escape(f"TMPDIR is {tmpdir}, which {problem}")):
        quickstart.run_quickstart(licensed=False)


@pytest.mark.parametrize("value", ["", "existing"])
def test_an_empty_or_usable_tmpdir_is_accepted(
    untrained: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    if value:
        (untrained / value).mkdir()
    monkeypatch.setenv("TMPDIR", value)
    with pytest.raises(AssertionError, match="trained before its checks"):
        quickstart.run_quickstart(licensed=False)  # past the checks, to the (failing) training


def test_the_command_says_what_to_do_in_one_line(
    untrained: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMPDIR", str(untrained / "missing"))
    result = CliRunner().invoke(app, ["quickstart"])
    assert result.exit_code == 1, result.output
    assert result.output.count("\n") == 1
    assert result.output.startswith(f"error: TMPDIR is {untrained / 'missing'}, which does not")
    assert "unset it, then run the quickstart again" in result.output
