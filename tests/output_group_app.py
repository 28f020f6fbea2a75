"""The source of a small ``OutputGroup`` program, for tests that run one in a subprocess."""

from __future__ import annotations


def output_group_app(command: str) -> str:
    """A program: a typer group of :class:`skruntime.cli.OutputGroup` whose one command is
    ``command`` (the source of a function), run on ``sys.argv``."""
    return f"""
import sys, typer
from skruntime.cli import OutputGroup
app = typer.Typer(cls=OutputGroup)
@app.callback()  # a group: one command alone is no OutputGroup
def group() -> None:
    pass
@app.command()
{command.strip()}
app()
"""
