"""``sklicense init`` and the server key: a disk or folder that refuses the key is one line
saying what to do and leaves no key behind (an empty key, kept by every later ``init``, made the
server unstartable); a damaged or loosely protected key is named with its fix; ``--state-dir``
is not silently ignored; a database in a missing folder is named as such; the help says where
the defaults come from."""

from __future__ import annotations

import errno
import os
import socket
import stat
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from typer.testing import CliRunner

from sklicense import crypto
from sklicense.cli import app


@pytest.fixture
def init(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``sklicense init --state-dir <tmp>/state`` on a SQLite file, in a clean environment."""
    for name in ("SKLICENSE_SIGNING_KEY_FILE", "SKLICENSE_STATE_DIR", "SKLICENSE_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    url = f"sqlite:///{tmp_path / 'sklicense.db'}"

    def run(command: str = "init") -> Any:
        args = [command, "--state-dir", str(tmp_path / "state"), "--database-url", url]
        return CliRunner().invoke(app, args)

    return run


class FullDisk:
    """What ``os.fdopen`` returns on a full disk: a file whose writes fail with ENOSPC."""

    def __init__(self, fd: int, *args: Any, **kwargs: Any) -> None:
        self.fd = fd

    def __enter__(self) -> FullDisk:
        return self

    def __exit__(self, *exc: Any) -> None:
        os.close(self.fd)

    def write(self, data: bytes) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_leaves_no_key_and_a_later_init_creates_it(init, tmp_path, monkeypatch):
    """Before: ``[Errno 28] No space left on device`` and an empty server.key, which the next
    ``init`` kept ("Kept existing") and then refused as no PEM key, for ever."""
    with monkeypatch.context() as patch:
        patch.setattr(os, "fdopen", FullDisk)
        failed = init()
    assert failed.exit_code == 1
    assert failed.output.startswith(
        f"Error: The server signing key {tmp_path / 'state' / 'server.key'} cannot be created "
        "(No space left on device): make its folder"
    )
    assert list((tmp_path / "state").iterdir()) == []  # no key, no temporary file
    again = init()
    assert again.exit_code == 0, again.output
    assert again.output.startswith("Created signing key")
    crypto.load_signing_key(tmp_path / "state" / "server.key")


def test_a_read_only_folder_is_one_line_saying_what_to_do(init, tmp_path, monkeypatch):
    """Before: an uncaught ``OSError`` (the command printed ``[Errno 30] Read-only file system``
    and nothing else)."""
    (tmp_path / "state").mkdir()

    def read_only(*args: Any, **kwargs: Any) -> int:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    with monkeypatch.context() as patch:
        patch.setattr(os, "open", read_only)
        result = init()
    assert result.exit_code == 1
    assert "cannot be created (Read-only file system): make its folder" in result.output
    assert "--state-dir, or SKLICENSE_SIGNING_KEY_FILE" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_key_that_appeared_meanwhile_is_kept(tmp_path: Path) -> None:
    """Two ``init`` at once: the second neither replaces the first's key nor leaves a file."""
    key = tmp_path / "server.key"
    key.write_bytes(b"the first init's key")
    assert crypto._write_new(key, b"another key") is False
    assert key.read_bytes() == b"the first init's key"
    assert [p.name for p in tmp_path.iterdir()] == ["server.key"]


def test_a_file_system_without_hard_links_gets_the_key_too(tmp_path: Path, monkeypatch) -> None:
    def no_links(*args: Any) -> None:
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(os, "link", no_links)
    assert crypto.create_signing_key(tmp_path / "server.key") is True
    crypto.load_signing_key(tmp_path / "server.key")
    assert stat.S_IMODE((tmp_path / "server.key").stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["server.key"]


def test_an_empty_key_left_by_an_older_init_is_named_with_the_fix(init, tmp_path) -> None:
    """Before: "is not a PEM Ed25519 key: Unable to load PEM file. See https://… MalformedFraming",
    with nothing on what to do."""
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "server.key").write_bytes(b"")
    result = init()
    assert result.exit_code == 1
    assert result.output == (
        f"Error: The server signing key {tmp_path / 'state' / 'server.key'} is empty: point "
        "--state-dir or SKLICENSE_SIGNING_KEY_FILE at the key `sklicense init` created, or "
        "restore it from a backup (only if no device pinned its public key yet, delete it and "
        "run `sklicense init` again).\n"
    )


def test_a_key_others_may_read_is_warned_about(init, tmp_path) -> None:
    """Before: "Kept existing signing key", though any local user could read it (and sign
    licences with it)."""
    assert init().exit_code == 0
    key = tmp_path / "state" / "server.key"
    key.chmod(0o644)
    result = init()
    assert result.exit_code == 0
    assert (
        f"Warning: the server signing key {key} is accessible to other users (mode 644); "
        f"whoever reads it can sign licences: run `chmod 600 {key}`"
    ) in result.output
    key.chmod(0o600)
    assert "Warning" not in init().output


def test_state_dir_is_refused_where_the_key_file_setting_would_override_it(
    init, tmp_path, monkeypatch
) -> None:
    """Before: ``init --state-dir state`` created the key at SKLICENSE_SIGNING_KEY_FILE and left
    the folder given empty (``serve --state-dir`` likewise read another key)."""
    elsewhere = tmp_path / "elsewhere.key"
    monkeypatch.setenv("SKLICENSE_SIGNING_KEY_FILE", str(elsewhere))
    result = init()
    assert result.exit_code == 1
    assert result.output == (
        f"Error: --state-dir {tmp_path / 'state'} would be ignored: SKLICENSE_SIGNING_KEY_FILE "
        f"names the key file ({elsewhere}). Leave out --state-dir, or unset "
        "SKLICENSE_SIGNING_KEY_FILE\n"
    )
    assert not elsewhere.exists() and not (tmp_path / "state").exists()


def test_the_help_says_where_the_defaults_come_from() -> None:
    """Before: "default: $SKLICENSE_DATABASE_URL" (unset: sqlite:///./sklicense.db) and
    "default ./sklicense_state" (SKLICENSE_STATE_DIR and SKLICENSE_SIGNING_KEY_FILE unsaid)."""
    text = " ".join(
        CliRunner(env={"COLUMNS": "400"}).invoke(app, ["init", "--help"]).output.split()
    )
    assert "$SKLICENSE_DATABASE_URL, else sqlite:///./sklicense.db" in text
    assert "$SKLICENSE_STATE_DIR, else ./sklicense_state" in text
    assert "$SKLICENSE_SIGNING_KEY_FILE" in text


def test_device_edit_has_no_no_activate_flag_that_does_nothing(sqlite_url) -> None:
    """Before: ``--no-activate`` was accepted, and could only ever mean "change nothing"."""
    result = CliRunner().invoke(
        app, ["device", "edit", "dev-1", "--no-activate", "--database-url", sqlite_url]
    )
    assert result.exit_code == 2
    assert "No such option: --no-activate" in result.output


def test_serve_warns_of_a_key_others_may_read(init, tmp_path, monkeypatch) -> None:
    assert init().exit_code == 0
    key = tmp_path / "state" / "server.key"
    key.chmod(0o640)
    started: list[Any] = []
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: started.append(kwargs))
    for name in ("SKLICENSE_DATABASE_URL", "SKLICENSE_STATE_DIR"):  # serve sets them
        monkeypatch.setenv(name, "")
    with socket.socket() as free:  # serve binds to check the port: not 8765, maybe in use
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    result = CliRunner().invoke(
        app,
        [
            "serve",
            "--port",
            str(port),
            "--state-dir",
            str(tmp_path / "state"),
            "--database-url",
            f"sqlite:///{tmp_path / 'sklicense.db'}",
        ],
    )
    assert result.exit_code == 0, result.output
    assert len(started) == 1
    assert f"Warning: the server signing key {key} is accessible to other users (mode 640)" in (
        result.output
    )


def test_a_database_in_a_missing_folder_is_named_as_such(tmp_path: Path) -> None:
    """Before: "the database refused: unable to open database file" (an uncaught error here)."""
    url = f"sqlite:///{tmp_path / 'missing' / 'sklicense.db'}"
    result = CliRunner().invoke(app, ["db", "upgrade", "--database-url", url])
    assert result.exit_code == 1
    assert result.output == (
        f"Error: The folder {tmp_path / 'missing'} of the database file does not exist: create "
        "it, or name a file in an existing folder (--database-url or SKLICENSE_DATABASE_URL).\n"
    )
    assert not (tmp_path / "missing").exists()
