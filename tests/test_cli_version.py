"""``skprotect --version`` and ``sklicense --version`` print the installed release, the runtime's
version and the configuration platform versions it reads, and exit 0 before any command runs
(there was no ``--version``: a bug report or a compatibility question had to find it in pip)."""

from __future__ import annotations

from importlib.metadata import version

import pytest
import typer
from typer.testing import CliRunner

from sklicense.cli import app as sklicense_app
from skprotect_pytorch.cli import app as skprotect_app
from skruntime import __version__ as runtime_version


@pytest.mark.parametrize(
    ("app", "program"), [(skprotect_app, "skprotect"), (sklicense_app, "sklicense")]
)
def test_version_names_the_release_runtime_and_platform_versions(
    app: typer.Typer, program: str
) -> None:
    result = CliRunner().invoke(app, ["--version", "run"])  # eager: no command runs
    assert result.exit_code == 0, result.output
    assert result.output == (
        f"{program} {version('skprotect')} (skruntime {runtime_version}, configuration "
        "platform versions 0, 1, 2)\n"
    )
