"""Migrating a TXT version-0 configuration whose key-params file is a named pipe: the check of
which model file it was written for read it with ``read_bytes()``, which blocks on a FIFO until
a writer comes, so the migration hung. It is now opened without blocking and refused as not a
regular file."""

from __future__ import annotations

import os
from pathlib import Path

from tests.fifo import raised_without_blocking
from tests.platforms.v0_migration import ADVICE, EP, protect_v0

from skprotect_pytorch.errors import ConfigurationError

PARAMS = "m/onnx/key_params_m.json"


def test_a_key_params_file_that_is_a_fifo_is_refused_without_blocking(workdir: Path) -> None:
    protector = protect_v0(EP.TXT)
    params = protector.outputs_dir / PARAMS
    params.unlink()
    os.mkfifo(params)
    err = raised_without_blocking(lambda: protector.migrate_configuration(1, EP.TXT), params)
    assert isinstance(err, ConfigurationError), err
    assert f"{params} is not a regular file but a named pipe (FIFO)" in str(err)
    assert ADVICE in str(err)
