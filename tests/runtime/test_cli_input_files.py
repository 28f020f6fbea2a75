"""``skprotect run --input`` files read by the runner: only numpy's own formats, never a pickle,
never through a named pipe, every member of an archive an array."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from skruntime.cli import read_inputs
from skruntime.cli_errors import CliError

X = np.ones((2, 3), np.float32)


@pytest.mark.parametrize("content", ["pickle", "zeros", "empty"])
def test_a_file_without_a_numpy_header_is_not_read_as_a_pickle(
    tmp_path: Path, content: str
) -> None:
    """numpy reads any file without a .npy or zip header as a pickle: a damaged file (zeros) or
    a pickled array was refused with numpy's advice to load it "unsafely" with allow_pickle."""
    path = tmp_path / "x.npy"
    data = {"pickle": pickle.dumps(X), "zeros": bytes(4096), "empty": b""}[content]
    path.write_bytes(data)
    with pytest.raises(CliError) as info:
        read_inputs([path], ["x"])
    assert info.value.code == 5
    found = "empty" if content == "empty" else "of another format, or damaged"
    assert str(info.value).startswith(
        f"cannot read input file {path} as .npy (the file is {found}: no .npy header). Save "
        "inputs with numpy.save"
    )
    assert "allow_pickle" not in str(info.value)


@pytest.mark.parametrize("member", ["y", "y.npy"])
def test_an_archive_member_that_is_not_an_array_is_refused(tmp_path: Path, member: str) -> None:
    """numpy returns a member without a .npy header as its bytes, which went on to the model and
    came back as "Input 'y' is a bytes value, not an array", not naming the file."""
    path = tmp_path / "in.npz"
    with zipfile.ZipFile(path, "w") as archive:
        with archive.open("x.npy", "w") as f:
            np.lib.format.write_array(f, X)
        archive.writestr(member, b"damaged")
    with pytest.raises(CliError) as info:
        read_inputs([path], ["x", "y"])
    assert info.value.code == 5
    assert str(info.value).startswith(
        f"cannot read input file {path} as .npz (its member y is not a .npy array)."
    )


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_pickled_arrays_are_refused(tmp_path: Path, suffix: str) -> None:
    objects = np.array([{"a": 1}, None], dtype=object)
    path = tmp_path / f"in{suffix}"
    if suffix == ".npy":
        np.save(path, objects, allow_pickle=True)
    else:
        np.savez(path, x=X, y=objects)
    with pytest.raises(CliError, match="Object arrays cannot be loaded") as info:
        read_inputs([path], ["x"] if suffix == ".npy" else ["x", "y"])
    assert info.value.code == 5


def test_inputs_come_with_where_they_were_read_from(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", X)
    np.save(tmp_path / "b.npy", X * 2)
    arrays, sources = read_inputs([tmp_path / "b.npy", tmp_path / "a.npy"], ["x", "y"])
    np.testing.assert_array_equal(arrays[0], X * 2)
    assert sources == [str(tmp_path / "b.npy"), str(tmp_path / "a.npy")]
    np.savez(tmp_path / "in.npz", X, X * 2)
    arrays, sources = read_inputs([tmp_path / "in.npz"], ["x", "y"])
    np.testing.assert_array_equal(arrays[1], X * 2)
    assert sources == [f"{tmp_path / 'in.npz'}[arr_0]", f"{tmp_path / 'in.npz'}[arr_1]"]
