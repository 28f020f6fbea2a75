"""The report names the cell folder of its settings (``cells/<model>-<hash>``); passed back as
the cells path, it was taken as a new root, and every cell was computed again inside it."""

from __future__ import annotations

from pathlib import Path

import pytest

from skprotect_pytorch.audit.cells import CellStore
from skprotect_pytorch.errors import StateError


@pytest.mark.parametrize("compute", [True, False])
def test_the_cell_folder_of_one_run_is_refused_naming_its_parent(
    tmp_path: Path, compute: bool
) -> None:
    context = {"model": "mlp", "seeds": 1}
    store = CellStore(tmp_path, context, log=lambda line: None)
    store.get("B@1", lambda: [0.5])
    assert store.folder is not None
    with pytest.raises(StateError, match=rf"pass the folder above it, {tmp_path}, where"):
        CellStore(store.folder, context, compute=compute, log=lambda line: None)
    assert [p.name for p in store.folder.iterdir() if p.is_dir()] == []  # nothing nested
