"""A file option spelled as a folder (``-o outputs.npz/``) is refused before any work:
``Path`` dropped the trailing ``/``, so the runner wrote the file ``outputs.npz``."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from skprotect_pytorch.cli import app


@pytest.mark.parametrize(
    "args",
    [
        ["run", "outputs/app", "mlp", "-i", "x.npy", "-o", "{}"],
        ["export-kek", "{}"],
        ["audit", "--json", "{}"],
        ["audit", "--markdown", "{}"],
    ],
)
@pytest.mark.parametrize("given", ["outputs.npz/", "outputs.npz/."])
def test_a_file_option_ending_in_a_slash_is_refused(
    workdir: Path, args: list[str], given: str
) -> None:
    """Exit 2 naming the path and what to pass, and nothing written."""
    argv = [a.format(given) for a in args]
    result = CliRunner().invoke(app, argv, env={"COLUMNS": "400"}, color=False)
    assert result.exit_code == 2, result.output
    assert f"'{given}' names a folder (a trailing '/'), but a file is expected: pass " in (
        result.output
    )
    assert "'outputs.npz' (no trailing '/') or a file in that folder" in result.output
    assert not (workdir / "outputs.npz").exists()


def test_an_empty_path_keeps_its_own_message(workdir: Path) -> None:
    """'' is :func:`~skruntime.cli_errors.empty_path`'s to refuse, not a trailing slash."""
    result = CliRunner().invoke(app, ["run", "outputs/app", "mlp", "-i", "x.npy", "-o", ""])
    assert result.exit_code == 2, result.output
    assert result.output == "error: --output: the path is empty (or '.'); pass a file name.\n"
