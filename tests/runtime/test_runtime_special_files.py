"""Deployed files replaced by a named pipe, a folder or a device: refused with a message naming
the file and what it is, never read (opening a FIFO blocked the process for ever, and a key file
linked to /dev/zero was read up to its 400-800 MB cap before being refused as too large)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.fifo import raised_without_blocking
from typer.testing import CliRunner

from skprotect_pytorch.cli import app as cli_app
from skruntime import ConfigurationError, KeyFileError, ModelFileError, SkRuntime
from skruntime.backends.base import ModelFile
from skruntime.cli import read_inputs
from skruntime.config import sha256_file
from skruntime.files import NotRegularFileError, open_regular
from skruntime.keyfile import is_test_key
from skruntime.mev import read_mev, write_mev

X = np.random.default_rng(2).standard_normal((2, 4)).astype(np.float32)
KEK = bytes(range(32))
SHA = "ab" * 32
#: what each replacement is called in the messages
KINDS = {"fifo": "a named pipe (FIFO)", "folder": "a folder", "device": "a character device"}


@pytest.fixture(scope="module")
def outputs(module_workdir: Path, protect_linear: Callable[..., Path]) -> Path:
    return protect_linear("app", "net", (4, 3), test_key=False).parent


@pytest.fixture
def app(outputs: Path, tmp_path: Path) -> Path:
    return shutil.copytree(outputs / "app", tmp_path / "app")


def _replace(path: Path, kind: str) -> None:
    """Put a FIFO, a folder or a link to /dev/zero where ``path`` was."""
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    else:
        path.symlink_to("/dev/zero")


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize(
    ("name", "error", "stage"),
    [
        ("skconfig.json", ConfigurationError, "init"),
        ("net/onnx/key_params_net.json", KeyFileError, "load"),
        ("net/onnx/key_vector_inv_net.txt", KeyFileError, "load"),
        ("net/onnx/net.onnx", ModelFileError, "load"),
    ],
)
def test_a_deployed_file_that_is_not_a_regular_file_is_refused(
    app: Path, name: str, error: type[Exception], stage: str, kind: str
) -> None:
    rt = SkRuntime(app) if stage == "load" else None
    path = app / name
    _replace(path, kind)
    err = raised_without_blocking(
        (lambda: rt.load("net", "onnx")) if rt is not None else (lambda: SkRuntime(app)), path
    )
    assert isinstance(err, error), err
    assert str(path) in str(err)
    assert "not a regular file" in str(err)
    assert KINDS[kind] in str(err)
    assert "written" in str(err) or "wrote" in str(err)  # what to do


def test_an_encrypted_key_file_that_is_a_fifo_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "mev_net_onnx.bin"
    spec = {"length": 4, "perm_sizes": [2], "scale_sizes": [1]}
    key = np.array([1, 0, 2, 1], np.float32)
    ids = {"model_name": "net", "fmt_slug": "onnx", "model_sha256": SHA}
    write_mev(path, **ids, key=key, spec=spec, kek=KEK)
    assert read_mev(path, **ids, kek=KEK).length == 4
    _replace(path, "fifo")
    err = raised_without_blocking(lambda: read_mev(path, **ids, kek=KEK), path)
    assert isinstance(err, KeyFileError)
    assert f"Encrypted key file {path} is a named pipe (FIFO), not a regular file" in str(err)


@pytest.mark.parametrize(
    "read", [sha256_file, ModelFile.read, is_test_key], ids=["sha256", "model_file", "test_key"]
)
def test_every_reader_refuses_a_fifo(tmp_path: Path, read: Callable[[Path], Any]) -> None:
    """The readers that the protector and the backends (given a path) use too."""
    fifo = tmp_path / "file"
    os.mkfifo(fifo)
    err = raised_without_blocking(lambda: read(fifo), fifo)
    assert isinstance(err, NotRegularFileError | KeyFileError), err
    assert f"{fifo} is a named pipe (FIFO), not a regular file" in str(err)


def test_a_file_swapped_for_a_fifo_after_its_check_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The descriptor is opened without blocking and checked itself: a FIFO put in place of a
    regular file between the check of the path and the open is refused too."""
    regular = tmp_path / "regular"
    regular.write_bytes(b"data")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    real_stat = os.stat

    def stat_before_the_swap(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        return real_stat(regular if Path(path) == fifo else path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat_before_the_swap)
    err = raised_without_blocking(lambda: open_regular(fifo), fifo)
    assert isinstance(err, NotRegularFileError)
    assert err.kind == "a named pipe (FIFO)"
    with open_regular(regular) as f:
        assert f.read() == b"data"


def test_the_command_line_says_what_an_input_path_is(outputs: Path, tmp_path: Path) -> None:
    """A named pipe given as --input was reported as not existing, which ``ls`` contradicts."""
    fifo = tmp_path / "x.npy"
    os.mkfifo(fifo)
    args = ["run", str(outputs / "app"), "net", "-i", str(fifo)]
    result = CliRunner().invoke(cli_app, args)
    assert result.exit_code == 6
    assert result.output == (
        f"error: input file {fifo} is a named pipe (FIFO), not a file; pass the file.\n"
    )


def _stat_as_regular(monkeypatch: pytest.MonkeyPatch, fifo: Path, regular: Path) -> None:
    """Make every ``os.stat`` of ``fifo`` describe ``regular``: the path is checked while still
    a regular file, and swapped for the FIFO before it is opened."""
    real_stat = os.stat

    def stat_before_the_swap(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        return real_stat(regular if Path(path) == fifo else path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat_before_the_swap)


def _run_with_fifo_swapped_in(
    outputs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fifo: Path, options: list[str]
) -> Any:
    """``skprotect run`` with ``options`` naming ``fifo``, which looks regular when checked
    (:func:`_stat_as_regular`) and is a FIFO when opened; fails if the run blocked on it."""
    regular = tmp_path / "regular"
    regular.write_bytes(KEK)
    os.mkfifo(fifo)
    np.save(tmp_path / "x.npy", X)
    _stat_as_regular(monkeypatch, fifo, regular)
    args = ["run", str(outputs / "app"), "net", "-i", str(tmp_path / "x.npy"), *options]
    result: list[Any] = []
    err = raised_without_blocking(lambda: result.append(CliRunner().invoke(cli_app, args)), fifo)
    assert err is None
    return result[0]


def test_a_kek_file_swapped_for_a_fifo_after_its_check_is_refused(
    outputs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--kek`` was checked with ``Path.is_file()`` and then read with ``read_bytes()``: a
    FIFO put in its place between the two blocked the runner for ever."""
    fifo = tmp_path / "kek"
    result = _run_with_fifo_swapped_in(outputs, tmp_path, monkeypatch, fifo, ["--kek", str(fifo)])
    assert result.exit_code == 6
    assert result.output == (
        f"error: --kek {fifo} is a named pipe (FIFO), not a file; pass the key-encryption key "
        "file that `skprotect export-kek` writes.\n"
    )


def test_a_server_public_key_file_swapped_for_a_fifo_after_its_check_is_refused(
    outputs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fifo = tmp_path / "server.pub"
    options = ["--licence-server", "http://127.0.0.1:9", "--server-public-key", str(fifo)]
    result = _run_with_fifo_swapped_in(outputs, tmp_path, monkeypatch, fifo, options)
    assert result.exit_code == 2
    assert result.output == (
        f"error: --server-public-key {fifo} is a named pipe (FIFO), not a regular file: pass the "
        "file holding the licence server's public key or that key in base64.\n"
    )


@pytest.mark.parametrize("option", ["--kek", "--server-public-key"])
def test_a_huge_key_file_is_refused_unread(outputs: Path, tmp_path: Path, option: str) -> None:
    """A key file is read only as far as a key can go: a 1 TiB (sparse) file given by mistake
    was read whole, ending as "error: MemoryError" (exit 1) or in the time to read it."""
    huge = tmp_path / "huge.key"
    with huge.open("wb") as f:
        f.truncate(1 << 40)
    np.save(tmp_path / "x.npy", X)
    args = ["run", str(outputs / "app"), "net", "-i", str(tmp_path / "x.npy"), option, str(huge)]
    if option == "--server-public-key":
        args += ["--licence-server", "http://127.0.0.1:9"]
    result = CliRunner().invoke(cli_app, args)
    expected = {
        "--kek": (4, f"error: --kek {huge} holds no key-encryption key: expected 32 bytes"),
        "--server-public-key": (
            2,
            f"error: --server-public-key {huge} is larger than 4,096 bytes, more than a public "
            "key file holds:",
        ),
    }[option]
    assert (result.exit_code, result.output[: len(expected[1])]) == expected


def test_an_input_file_swapped_for_a_fifo_after_its_check_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--input`` was checked with ``Path.is_file()`` and then given to ``np.load``, whose
    ``open()`` of a FIFO put in its place in between blocked for ever."""
    regular, fifo = tmp_path / "regular.npy", tmp_path / "x.npy"
    np.save(regular, X)
    os.mkfifo(fifo)
    _stat_as_regular(monkeypatch, fifo, regular)
    err = raised_without_blocking(lambda: read_inputs([fifo], ["x"]), fifo)
    assert (getattr(err, "code", None), str(err)) == (
        6,
        f"input file {fifo} is a named pipe (FIFO), not a file; pass the file.",
    )
