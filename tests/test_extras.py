"""skprotect_pytorch.extras: the one check, shared by the CLI and the quickstart, of which
modules of an optional extra are missing."""

from __future__ import annotations

import subprocess
import sys

import pytest

from skprotect_pytorch.extras import missing_modules


def test_missing_modules_names_the_absent_ones_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sqlalchemy", None)  # find_spec gives None
    names = ("no_such_module_h1", "json", "sqlalchemy", "importlib")
    assert missing_modules(names) == ["no_such_module_h1", "sqlalchemy"]
    assert missing_modules(iter(["json"])) == []
    assert missing_modules([]) == []


def test_cli_and_quickstart_use_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both lists go through the one helper: a module it reports missing is missing for both."""
    from skprotect_pytorch import cli, quickstart

    asked: list[tuple[str, ...]] = []

    def recorded(names: tuple[str, ...]) -> list[str]:
        asked.append(tuple(names))
        return [names[0]]

    monkeypatch.setattr(cli, "missing_modules", recorded)
    monkeypatch.setattr(quickstart, "missing_modules", recorded)
    assert quickstart.missing_licence_modules() == [quickstart.LICENCE_MODULES[0]]
    with pytest.raises(cli.typer.Exit) as exited:
        cli._require_protector("scan", 2)
    assert exited.value.exit_code == 2
    assert asked == [quickstart.LICENCE_MODULES, cli.PROTECT_MODULES]


def test_extras_and_the_cli_import_no_torch() -> None:
    """A ``skprotect[runtime]`` install has no torch: the check must not need it."""
    code = (
        "import sys, skprotect_pytorch.extras, skprotect_pytorch.cli; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
