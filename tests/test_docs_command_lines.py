"""The user docs' command lines match the commands: every ``skprotect`` and ``sklicense``
subcommand and option they show exists, and the ``skprotect run`` example feeds the README's model
an input it takes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer.main

from sklicense.cli import app as sklicense_app
from skprotect_pytorch.cli import app as skprotect_app

ROOT = Path(__file__).resolve().parents[1]
USER_DOCS = [ROOT / "README.md", *(ROOT / "docs" / name for name in (
    "api.md", "runtime.md", "artifacts.md", "licensing.md", "migration.md"
))]  # fmt: skip
# words that follow a program's name in prose, not a subcommand
PROSE = {"protects", "wrote", "writes", "minimal", "migrated"}
# a command line shown in a doc: the program, its words, up to the end of the code span or line
COMMAND_LINE = re.compile(r"\b(skprotect|sklicense) ((?:\\\n|[^`\n#|])*)")


def _command(group: Any, words: list[str]) -> tuple[Any, list[str]]:
    """The (sub)command that ``words`` name (``app create`` ...) and the words that follow it
    (typer's click commands; typer 0.29 vendors its own click, hence no click types here)."""
    command = group
    while words and words[0] in getattr(command, "commands", {}):
        command = command.commands[words.pop(0)]
    return command, words


def _options(command: Any) -> set[str]:
    """The command's option names (``--format``, ``-f``, ``--no-quick``), not its arguments."""
    names = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    return {name for name in names if name.startswith("-")}


def documented_command_lines() -> list[tuple[str, str, str]]:
    """(doc, program, rest of the line) for every command line the user docs show."""
    found = []
    for doc in USER_DOCS:
        for program, rest in COMMAND_LINE.findall(doc.read_text()):
            if rest.split()[:1] and re.fullmatch(r"[a-z][a-z-]*", rest.split()[0]):
                found.append((doc.name, program, rest.replace("\\\n", " ")))
    return found


def test_the_docs_show_command_lines() -> None:
    """The parser finds the docs' command lines of both programs (so the next test checks some)."""
    programs = {program for _, program, _ in documented_command_lines()}
    assert programs == {"skprotect", "sklicense"}


@pytest.mark.parametrize(("doc", "program", "line"), documented_command_lines())
def test_documented_subcommands_and_options_exist(doc: str, program: str, line: str) -> None:
    """A subcommand or option renamed in the code, or mistyped in a doc, fails here."""
    group = typer.main.get_command(skprotect_app if program == "skprotect" else sklicense_app)
    assert group.commands
    words = line.split()
    command, rest = _command(group, list(words))
    if words[0] in PROSE:  # "skprotect protects ...", "the skprotect minimal version"
        return
    assert command is not group, f"{doc}: `{program} {line.strip()}`: no such subcommand"
    named = {word.strip("[]").split("=")[0] for word in rest}  # [--opt VALUE]: optional
    unknown = {w for w in named if re.fullmatch(r"--[a-z][a-z0-9-]*", w)} - _options(command)
    assert not unknown, f"{doc}: `{program} {line.strip()}`: no such option {sorted(unknown)}"


def test_run_example_feeds_the_readme_model_an_input_it_takes() -> None:
    """runtime.md's first ``skprotect run`` example runs the README's ``my_model``, protected on
    one example input and no dynamic axis: its input must have that example's shape."""
    readme = (ROOT / "README.md").read_text()
    protected = re.search(r'"my_model",\s*\[torch\.randn\(([\d, ]+)\)\]', readme)
    assert protected is not None and "dynamic_shapes" not in readme.split("```python")[1]
    runtime = (ROOT / "docs" / "runtime.md").read_text()
    example = re.search(r"np\.save\('x\.npy', np\.random\.rand\(([\d, ]+)\)", runtime)
    assert example is not None
    assert example.group(1) == protected.group(1)
    shown = re.search(r"my_model \[onnx, cpu\]: output\.1 \((\d+), 10\)", runtime)
    assert shown is not None and shown.group(1) == protected.group(1).split(",")[0]


def test_run_options_table_lists_every_option_of_skprotect_run() -> None:
    """runtime.md's option table of ``skprotect run`` names exactly the command's options."""
    runtime = (ROOT / "docs" / "runtime.md").read_text()
    section = runtime.split("## Command line: `skprotect run`")[1].split("\n## ")[0]
    table = section.split("| option | meaning |")[1].split("\n\n")[0]
    documented = set(re.findall(r"^\| ([^|]*)\|", table, re.M))  # first column
    listed = {opt for cell in documented for opt in re.findall(r"`(--?[a-z][a-z-]*)`", cell)}
    command, _ = _command(typer.main.get_command(skprotect_app), ["run"])
    assert listed == _options(command) - {"--help"}
