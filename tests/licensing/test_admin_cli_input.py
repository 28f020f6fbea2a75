"""Bad input to the admin CLI: values that are not UTF-8 text (a non-UTF-8 argument or
environment variable reaches Python as lone surrogates) get one Error line or a clean answer,
never a traceback; an admin token an HTTP header cannot carry is refused when the settings are
read; a KEK file is not read whole before it is refused; a duration under a second is refused
as such."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from sklicense import db
from sklicense.cli import app as cli
from sklicense.settings import Settings, SettingsError

NOT_UTF8 = "\udcff"
"""What the byte 0xff of a command line argument becomes in Python."""


@pytest.mark.parametrize("command", [["device", "revoke"], ["device", "edit", "--activate"]])
def test_a_device_id_that_is_not_utf8_is_not_found(database_url, command) -> None:
    """The lookup failed binding the id (UnicodeEncodeError, a traceback)."""
    args = [*command[:2], f"dev{NOT_UTF8}", *command[2:], "--database-url", database_url]
    result = CliRunner().invoke(cli, args)
    assert (result.exit_code, result.output) == (1, "Error: device 'dev\\udcff' not found\n")


def test_a_database_file_name_that_is_not_utf8_is_shown_escaped(tmp_path: Path) -> None:
    """The migration ran, then printing the URL failed (a traceback, exit code 1)."""
    url = f"sqlite:///{tmp_path}/licences{NOT_UTF8}.db"
    result = CliRunner().invoke(cli, ["db", "upgrade", "--database-url", url])
    assert (result.exit_code, result.output) == (
        0,
        f"Database sqlite:///{tmp_path}/licences%5Cudcff.db is at revision {db.head_revision()}\n",
    )


@pytest.mark.parametrize(
    "token",
    ["x" * 40 + NOT_UTF8, "é" * 40, " " + "x" * 40, "x" * 40 + "\t"],
    ids=["not-utf8", "not-ascii", "leading-space", "tab"],
)
def test_an_admin_token_no_header_can_carry_is_refused(token: str) -> None:
    """Such a token never matched (a header is read as Latin-1 and stripped), and one from an
    environment variable that is not UTF-8 made every admin request a 500."""
    with pytest.raises(SettingsError) as refused:
        Settings(admin_token=token)
    assert str(refused.value) == (
        "admin_token (SKLICENSE_ADMIN_TOKEN) must be printable ASCII, without a space at either "
        "end (it is sent in an HTTP header), but the one given is not: generate one with "
        "`openssl rand -hex 32`"
    )
    assert Settings(admin_token="correct horse battery staple, 32+").admin_token


def test_the_cli_says_so_in_one_line(database_url) -> None:
    result = CliRunner().invoke(
        cli,
        ["customer", "list", "--database-url", database_url],
        env={"SKLICENSE_ADMIN_TOKEN": "x" * 40 + NOT_UTF8},
    )
    assert result.exit_code == 1
    assert result.output.startswith("Error: admin_token (SKLICENSE_ADMIN_TOKEN) must be")
    assert "xxxx" not in result.output  # never the secret


def test_a_large_kek_file_is_refused_unread(database_url, tmp_path: Path) -> None:
    """The whole file was read first: a model passed by mistake (gigabytes), or /dev/zero,
    took all the memory."""
    wrong = tmp_path / "model.onnx"
    wrong.write_bytes(b"A" * 2000)
    args = ["app", "create", "app", "--kek-file", str(wrong), "--database-url", database_url]
    result = CliRunner().invoke(cli, args)
    assert (result.exit_code, result.output) == (
        1,
        f"Error: {wrong} is over 1024 bytes, so not a KEK file: pass the file `skprotect "
        "export-kek` writes (45 bytes)\n",
    )


def test_a_duration_under_a_second_is_refused_as_such(database_url) -> None:
    """The refusal said "a number of days over 0" of a number over 0, and no more."""
    args = ["token", "create", "--expires-days", "0.000001", "--database-url", database_url]
    result = CliRunner().invoke(cli, args)
    assert (result.exit_code, result.output) == (
        1,
        "Error: --expires-days must be a number of days over 0 (1 second at least) and up to "
        "36500, but got 1e-06\n",
    )
