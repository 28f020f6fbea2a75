"""``sklicense token create`` keeps no token that it could not print: with standard output
closed (``>&-``) or a pipe whose reader went away (``| head -c0``), the token was stored, valid,
and never shown (closed: exit code 0 and not a word), so nobody knew a token that works."""

from __future__ import annotations

import shlex
import subprocess
import sys

from sklicense import crud, db

MAIN = "from sklicense.cli import main; main()"
MESSAGE = (
    "Error: the token could not be printed ({reason}), so it was not created: run the command "
    "again with its output to a terminal, a file or a pipe read to its end\n"
)


def _stored_tokens(url: str) -> list[object]:
    with db.session_factory(url)() as session:
        return list(crud.list_tokens(session))


def _token_create(url: str) -> list[str]:
    return [sys.executable, "-c", MAIN, "token", "create", "--database-url", url]


def test_a_token_that_cannot_be_printed_is_not_kept(sqlite_url: str) -> None:
    before = len(_stored_tokens(sqlite_url))
    closed = subprocess.run(  # bash's >&-: the command starts without a standard output
        ["bash", "-c", f"{shlex.join(_token_create(sqlite_url))} >&-"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert closed.returncode == 1
    assert closed.stderr == MESSAGE.format(reason="standard output is closed")
    piped = subprocess.Popen(
        _token_create(sqlite_url), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    piped.stdout.close()  # the reader is gone (| head -c0) before the token is printed
    errors = piped.stderr.read()
    assert piped.wait(timeout=120) == 1
    assert errors == MESSAGE.format(reason="Broken pipe")
    assert len(_stored_tokens(sqlite_url)) == before


def test_a_printed_token_is_kept(sqlite_url: str) -> None:
    before = len(_stored_tokens(sqlite_url))
    done = subprocess.run(
        _token_create(sqlite_url),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("skl_")
    assert len(_stored_tokens(sqlite_url)) == before + 1
