"""``--cells`` naming a file: with ``--stored-only`` the audit said "No cells for these settings
in FILE", as if the folder held other settings' cells; it now says the path is not a folder."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from skprotect_pytorch.audit.cells import CellStore
from skprotect_pytorch.cli import app
from skprotect_pytorch.errors import StateError

NOT_A_FOLDER = "is a file, not a folder: pass a writable folder for the audit's cells"


def test_stored_only_with_a_file_says_it_is_not_a_folder(workdir: Path) -> None:
    (workdir / "cells").write_text("")
    result = CliRunner().invoke(app, ["audit", "--quick", "--cells", "cells", "--stored-only"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: The cells path cells {NOT_A_FOLDER}")
    assert result.output.count("\n") == 1


@pytest.mark.parametrize("compute", [False, True])
def test_a_path_through_a_file_names_the_file(tmp_path: Path, compute: bool) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    message = f"The cells path {blocker / 'sub'} goes through the file {blocker}, not a folder"
    with pytest.raises(StateError, match=re.escape(message)):
        CellStore(blocker / "sub", {"model": "m"}, compute=compute)
    assert blocker.read_text() == ""
