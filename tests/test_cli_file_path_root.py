"""A file option spelled ``/``, ``./`` or ``../`` is refused without the advice to pass it
without the trailing ``/`` ("pass '/' (no trailing '/')" contradicted itself; '.' and '..' are
folders too); ``-`` and ``/dev/stdout`` stay file paths."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer

from skruntime.cli import file_path


@pytest.mark.parametrize("given", ["/", "./", "../", "models/../"])
def test_a_folder_without_a_file_name_is_told_to_name_a_file(given: str) -> None:
    with pytest.raises(typer.BadParameter) as refused:
        file_path(given)
    assert str(refused.value) == (
        f"{given!r} names a folder (a trailing '/'), but a file is expected: pass a file in "
        "that folder"
    )


@pytest.mark.parametrize("given", ["-", "/dev/stdout", "out.npz", "../out.npz"])
def test_file_names_pass(given: str) -> None:
    assert file_path(given) == Path(given)
