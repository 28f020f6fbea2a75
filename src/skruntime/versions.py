"""What ``--version`` of the command lines prints: the installed package and what it reads."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

import typer

from .config import SUPPORTED_PLATFORM_VERSIONS
from .runtime import RUNTIME_VERSION


def versions_line(program: str) -> str:
    """``program``'s version (the installed ``skprotect`` distribution's), the runtime's and
    the platform versions it reads: what a bug report or a compatibility question needs."""
    try:
        installed = version("skprotect")
    except PackageNotFoundError:  # run from a source tree that was never installed
        installed = "not installed"
    platforms = ", ".join(map(str, SUPPORTED_PLATFORM_VERSIONS))
    return (
        f"{program} {installed} (skruntime {RUNTIME_VERSION}, configuration platform versions "
        f"{platforms})"
    )


def version_option(program: str) -> object:
    """A ``--version`` option for a typer callback: prints :func:`versions_line` and exits
    before any command runs."""

    def show(value: bool) -> None:
        if value:
            typer.echo(versions_line(program))
            raise typer.Exit()

    return Annotated[
        bool,
        typer.Option(
            "--version", callback=show, is_eager=True, help="Print the versions and exit."
        ),
    ]
