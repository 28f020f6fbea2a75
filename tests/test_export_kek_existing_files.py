"""``export-kek`` and ``ProtectionState.export_kek`` replace a file only when it holds nothing
or a key-encryption key: both replaced any file, so exporting into the state folder's
``key_epochs.json`` destroyed the rotation record (the next protection refused the state), and
the API, which api.md says writes the file as the command does, replaced a named pipe or a
device (``/dev/null`` as root) with a regular file, which only the command refused."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from skprotect_pytorch.cli import app
from skprotect_pytorch.errors import StateError
from skprotect_pytorch.state import ProtectionState


def test_the_command_keeps_a_file_that_holds_something_else(workdir: Path) -> None:
    state = ProtectionState.open("app")
    state.record_key_epoch("m", 2)
    epochs = state.folder / "key_epochs.json"
    before = epochs.read_bytes()
    given = ".skprotect_private/app/key_epochs.json"
    result = CliRunner().invoke(app, ["export-kek", given, "--application-name", "app"])
    assert result.exit_code == 1, result.output
    assert result.output.startswith(
        f"error: {given} exists and holds something other than a key-encryption key"
    )
    assert epochs.read_bytes() == before
    assert state.key_epoch_floor("m") == 2  # the record still reads


@pytest.mark.parametrize("content", [b"", b"old kek\n", b"x" * 5000])
def test_the_api_keeps_other_files_and_replaces_empty_ones_and_keks(
    workdir: Path, content: bytes
) -> None:
    state = ProtectionState.open("app")
    other_secret = workdir / "elsewhere" / "app" / "master.key"  # another state root's
    other_secret.parent.mkdir(parents=True)
    other_secret.write_bytes(os.urandom(32))
    secret = other_secret.read_bytes()
    with pytest.raises(StateError, match="holds something other than a key-encryption key"):
        state.export_kek(other_secret)
    assert other_secret.read_bytes() == secret
    target = workdir / "kek.b64"
    target.write_bytes(content)
    if content:
        with pytest.raises(StateError, match="Remove it first"):
            state.export_kek(target)
        assert target.read_bytes() == content
        target.unlink()
    state.export_kek(target)  # new, then over a key-encryption key (another application's too)
    ProtectionState.open("other").export_kek(target)
    state.export_kek(target)
    assert base64.b64decode(target.read_bytes()) == state.kek


def test_the_api_refuses_a_named_pipe_as_the_command_does(workdir: Path) -> None:
    state = ProtectionState.open("app")
    os.mkfifo(workdir / "pipe")
    with pytest.raises(StateError, match=r"pipe is a named pipe \(FIFO\), not a file"):
        state.export_kek(workdir / "pipe")
    assert (workdir / "pipe").is_fifo()
    with pytest.raises(StateError, match="is a folder; pass a file name"):
        state.export_kek(workdir)


@pytest.mark.parametrize("path", [None, 123, b"kek.b64", ""])
def test_the_api_refuses_what_is_not_a_path(workdir: Path, path: object) -> None:
    """pathlib raised a bare TypeError for None, 123 and bytes (until 2026-12-07)."""
    with pytest.raises(StateError, match="path must be a file path"):
        ProtectionState.open("app").export_kek(path)  # type: ignore[arg-type]
    assert not (workdir / "kek.b64").exists()
