"""Migrating a LINUX version-0 configuration whose encrypted key file is a folder or a named
pipe: the check took anything but a regular file for a missing key file and signed version 1
(the TXT platform's check refuses its key-params file in that state). It is now refused as not
a regular file, as the TXT one is."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tests.platforms.v0_migration import ADVICE, EP, protect_v0, refused

MEV = "m/onnx/mev_m_onnx.bin"


@pytest.mark.parametrize(("make", "kind"), [(os.mkdir, "a folder"), (os.mkfifo, "a named pipe")])
def test_a_key_file_that_is_not_a_file_is_refused(workdir: Path, make, kind: str) -> None:
    protector = protect_v0(EP.LINUX)
    mev = protector.outputs_dir / MEV
    mev.unlink()
    make(mev)
    message = refused(protector, EP.LINUX)
    assert f"{mev} is not a regular file but {kind}" in message
    assert ADVICE in message
