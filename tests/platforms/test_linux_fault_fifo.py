"""Migrating a LINUX version-0 configuration whose encrypted key file became a named pipe after
the migration checked that it is a file: the check of the key file opened it with ``open()``,
which blocks on a FIFO until a writer comes, so the migration hung. It is now opened without
blocking and refused as not a regular file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tests.fifo import raised_without_blocking
from tests.platforms.v0_migration import ADVICE, EP, protect_v0

from skprotect_pytorch.errors import ConfigurationError

MEV = "m/onnx/mev_m_onnx.bin"


def test_a_key_file_swapped_for_a_fifo_is_refused_without_blocking(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    protector = protect_v0(EP.LINUX)
    mev = protector.outputs_dir / MEV
    mev.unlink()
    os.mkfifo(mev)
    # the FIFO appears between the is_file() check and the open: the check still saw a file
    real_is_file = Path.is_file
    monkeypatch.setattr(Path, "is_file", lambda p: p == mev or real_is_file(p))
    err = raised_without_blocking(lambda: protector.migrate_configuration(1, EP.LINUX), mev)
    assert isinstance(err, ConfigurationError), err
    assert f"{mev} is not a regular file but a named pipe (FIFO)" in str(err)
    assert ADVICE in str(err)
