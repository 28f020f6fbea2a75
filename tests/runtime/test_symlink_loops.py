"""A symbolic link that leads back to itself, where a file or folder is expected.

``os.stat`` of it fails with ELOOP, which ``Path.exists()`` and ``is_file()`` report as
nothing there: ``skprotect run`` said an input, ``--kek`` or outputs folder "does not exist"
(it does), ``--kek`` advised read access ("cannot be read: Too many levels of symbolic links.
Give this user read access"), ``--output`` passed its check and failed only after the model
had run (exit code 1), and a configuration file that loops was "No configuration in" its
folder. Each now says it is a loop of symbolic links, as for a folder or a named pipe."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from skprotect_pytorch.cli import app
from skruntime import SkRuntime
from skruntime.errors import ConfigurationError, KeyFileError
from skruntime.files import NotRegularFileError, open_regular
from skruntime.keyfile import key_params_filename, read_txt_keys, write_txt_keys


def loop(path: Path) -> Path:
    path.symlink_to(path.name)
    return path


@pytest.fixture
def x(tmp_path: Path) -> Path:
    np.save(tmp_path / "x.npy", np.zeros((2, 6), np.float32))
    return tmp_path / "x.npy"


def run(*args: str | Path) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["run", *map(str, args)])
    return result.exit_code, result.stderr


def test_open_regular_refuses_a_loop(tmp_path: Path) -> None:
    with pytest.raises(NotRegularFileError) as caught:
        open_regular(loop(tmp_path / "f"))
    assert caught.value.kind == "a loop of symbolic links"


def test_run_names_a_loop_for_every_path(tmp_path: Path, x: Path) -> None:
    """``--output`` is refused before any work: the outputs folder is not even looked at."""
    looped = loop(tmp_path / "loop.npy")
    missing, empty = tmp_path / "missing", tmp_path / "app"
    empty.mkdir()
    assert run(empty, "m", "-i", looped) == (
        6,
        f"error: input file {looped} is a loop of symbolic links, not a file; pass the file.\n",
    )
    assert run(missing, "m", "-i", x, "-o", looped) == (
        2,
        f"error: --output {looped}: it is a loop of symbolic links; pass another path.\n",
    )
    assert run(empty, "m", "-i", x, "--kek", looped) == (
        6,
        f"error: --kek {looped} is a loop of symbolic links, not a file; pass the "
        "key-encryption key file that `skprotect export-kek` writes.\n",
    )
    folder = loop(tmp_path / "folder")
    assert run(folder, "m", "-i", x) == (
        6,
        f"error: outputs folder {folder} is a loop of symbolic links, not a folder: pass the "
        "folder that holds the configuration (outputs/<application_name>).\n",
    )


def test_a_configuration_that_loops_is_named(tmp_path: Path) -> None:
    config = loop(tmp_path / "skconfig.json")
    with pytest.raises(ConfigurationError) as caught:
        SkRuntime(tmp_path)
    assert str(caught.value).startswith(
        f"Configuration file {config} is a loop of symbolic links, not a regular file"
    )


def test_a_key_file_that_loops_is_named(tmp_path: Path) -> None:
    key = np.array([2, 0, 1, 1.5, 0.5, 1, 1], np.float32)
    spec = {"length": 7, "perm_sizes": [3], "scale_sizes": [2]}
    write_txt_keys(tmp_path, "m", key, spec, test_key=False, rng=np.random.default_rng(0))
    params = tmp_path / key_params_filename("m")
    params.unlink()
    loop(params)
    with pytest.raises(KeyFileError, match=f"Key file {params} is a loop of symbolic links"):
        read_txt_keys(tmp_path, "m")
