"""The LINUX key store: a key file cut short is reported as truncated."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from skruntime.errors import KeyFileError
from skruntime.mev import read_mev, write_mev

KEK = bytes(range(32))
SHA = "ab" * 32
IDS = {"model_name": "net", "fmt_slug": "onnx", "model_sha256": SHA}


@pytest.mark.parametrize("size", [0, 3, 6, 20])
def test_a_key_file_cut_short_is_truncated_not_foreign(tmp_path: Path, size: int) -> None:
    """An empty or short file (a copy interrupted by a full disk) was "not a skprotect key file
    (bad magic)" when it held fewer bytes than the magic: it is a truncated key file."""
    path = tmp_path / "mev_net_onnx.bin"
    key = np.array([1, 0, 2.0, 1.0], np.float32)
    write_mev(
        path, key=key, spec={"length": 4, "perm_sizes": [2], "scale_sizes": [1]}, kek=KEK, **IDS
    )
    path.write_bytes(path.read_bytes()[:size])
    with pytest.raises(KeyFileError, match=rf"is truncated \({size} bytes, at least 34 needed\)"):
        read_mev(path, kek=KEK, **IDS)
