"""A corrupted field name must not switch off the key-params seal.

Files written before ``params_sha256`` existed are read without it; a one-byte corruption of
that field's name made a sealed file look like one of them, and a corrupted share then combined
into a wrong key: wrong outputs, no error.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from skruntime.errors import KeyFileError
from skruntime.keyfile import key_params_filename, read_txt_keys, write_txt_keys


@pytest.fixture
def params(tmp_path: Path) -> Path:
    """Key files of a two-share key (3-element permutation, two scales)."""
    key = np.array([2, 0, 1, 1.5, 0.5, 1, 1], np.float32)
    spec = {"length": 7, "perm_sizes": [3], "scale_sizes": [2]}
    write_txt_keys(tmp_path, "m", key, spec, test_key=False, rng=np.random.default_rng(0))
    return tmp_path / key_params_filename("m")


def test_a_corrupted_seal_name_is_refused(params: Path) -> None:
    raw = params.read_bytes()
    params.write_bytes(raw.replace(b'"params_sha256"', b'"p`rams_sha256"'))
    with pytest.raises(
        KeyFileError, match=r"no params_sha256 but unknown field\(s\) p`rams_sha256"
    ):
        read_txt_keys(params.parent, "m")
    doc = json.loads(params.read_bytes())
    doc["u_exponents"][0] += 1  # with the seal off, a changed share gave a wrong key
    params.write_text(json.dumps(doc))
    with pytest.raises(KeyFileError, match="unknown field"):
        read_txt_keys(params.parent, "m")


def test_an_unsealed_file_of_known_fields_is_still_read(params: Path) -> None:
    sealed = read_txt_keys(params.parent, "m").static_key()
    doc = json.loads(params.read_bytes())
    del doc["params_sha256"]
    params.write_text(json.dumps(doc))
    np.testing.assert_array_equal(read_txt_keys(params.parent, "m").static_key(), sealed)
