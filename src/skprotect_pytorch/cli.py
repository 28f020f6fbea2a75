"""The ``skprotect`` command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from skruntime.cli import run_command

from .errors import SkProtectError

app = typer.Typer(help="skprotect: lock, export and license PyTorch models.", no_args_is_help=True)
app.command("run")(run_command)


@app.command()
def quickstart() -> None:
    """Train a small CNN on the bundled digits data, protect it to every format this machine can
    produce, and print accuracy with the key, without it, and of the original."""
    from .quickstart import main

    try:
        main()
    except SkProtectError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None


@app.command("export-kek")
def export_kek(
    output: Annotated[
        Path, typer.Argument(help="File to write the key-encryption key to (mode 0600).")
    ],
    application_name: Annotated[
        str, typer.Option(help="Application whose key to export.")
    ] = "default_app",
) -> None:
    """Export the application's key-encryption key (LINUX platform) for the licence server."""
    from .state import ProtectionState

    try:
        ProtectionState.open(application_name).export_kek(output)
    except SkProtectError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"key-encryption key of '{application_name}' written to {output}")


if __name__ == "__main__":
    app()
