"""``skprotect run --kek`` given the key-encryption key itself instead of its file (as
``--server-public-key`` takes a key's text): the error was "key-encryption key file <the key>
does not exist.", which printed the secret to the terminal and the logs, and did not say that
the option takes a file. It now says so without repeating the key."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from skprotect_pytorch.cli import app as cli_app

KEK = bytes(range(100, 132))
SLASHED = bytes(range(100, 103)) + b"\xff\xff\xff" + bytes(range(103, 129))
"""A key whose base64 holds "////" (about one key in 100 holds "//"), which a ``Path`` of the
option folds into "/": that text was taken for a missing file and echoed (exit code 6)."""
KEK_FILE = "the key-encryption key file that `skprotect export-kek` writes"


def run(tmp_path: Path, kek: str) -> tuple[int, str]:
    (tmp_path / "outputs").mkdir(exist_ok=True)
    np.save(tmp_path / "x.npy", np.zeros((1, 2), np.float32))
    args = ["run", str(tmp_path / "outputs"), "m", "-i", str(tmp_path / "x.npy"), "--kek", kek]
    result = CliRunner().invoke(cli_app, args)
    return result.exit_code, result.output


@pytest.mark.parametrize(
    "text",
    [base64.b64encode(KEK).decode(), base64.b64encode(SLASHED).decode(), KEK.hex()],
    ids=["base64", "base64 with //", "hex"],
)
def test_the_key_itself_is_refused_without_repeating_it(tmp_path: Path, text: str) -> None:
    code, output = run(tmp_path, text)
    assert (code, output) == (
        2,
        "error: --kek takes the path of a file holding the key-encryption key, but got the key "
        "itself (not repeated here: on a command line, other users see it in the process list). "
        "Pass the file that `skprotect export-kek` writes, readable by this user only.\n",
    )
    assert text not in output


def test_a_file_named_like_a_key_is_read_as_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    name = KEK.hex()
    Path(name).write_bytes(b"not a key")
    assert run(tmp_path, name) == (
        4,
        f"error: --kek {name} holds no key-encryption key: expected 32 bytes, raw or "
        f"base64-encoded; pass {KEK_FILE}.\n",
    )


def test_a_missing_file_is_still_named(tmp_path: Path) -> None:
    missing = tmp_path / "kek.b64"
    assert run(tmp_path, str(missing)) == (
        6,
        f"error: --kek {missing} does not exist; pass {KEK_FILE}.\n",
    )


@pytest.mark.parametrize(
    ("source", "code", "what"),
    [("/dev/null", 6, "is a character device, not a file"), ("empty", 4, "is empty")],
)
def test_an_empty_or_special_kek_source_names_the_option_and_the_file_to_pass(
    tmp_path: Path, source: str, code: int, what: str
) -> None:
    """``--kek /dev/null`` said "key-encryption key file /dev/null is a character device, not a
    file; pass the file." (exit code 6) and an empty file "holds no key-encryption key" (exit
    code 4), neither naming the option nor the file it takes. The codes are those of an input
    file: 6 for a path that is not a file, 4 (as 5 for inputs) for a file that holds no key."""
    if source == "empty":
        source = str(tmp_path / "kek.b64")
        Path(source).touch()
    expected = f"error: --kek {source} {what}"
    expected += ": expected 32 bytes, raw or base64-encoded" if code == 4 else ""
    assert run(tmp_path, source) == (code, f"{expected}; pass {KEK_FILE}.\n")
