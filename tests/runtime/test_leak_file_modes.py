"""Key files get the permissions the umask gives a new file, as the model files beside them.

Until 2026-12-07 they were written through a temporary file given a fixed mode 0644 (``chmod``
ignores the umask), so under ``umask 077`` the model files were 0600 and the key files, the
key itself on the TXT platform, stayed readable by every user of the machine."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from tests.models import LIFECYCLE_INPUT, lifecycle_mlp

from skruntime.files import KEY_FILE_MODE, new_file_mode
from skruntime.keyfile import write_txt_keys
from skruntime.mev import write_mev

SPEC = {"length": 6, "perm_sizes": [2], "scale_sizes": [2]}
KEY = np.array([1, 0, 2.0, 3.0, 1, 1], np.float32)


@contextlib.contextmanager
def umask(value: int) -> Iterator[None]:
    previous = os.umask(value)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


UMASKS = [(0o077, 0o600), (0o022, 0o644), (0o027, 0o640), (0o002, 0o644), (0o000, 0o644)]


@pytest.mark.parametrize(("mask", "expected"), UMASKS, ids=["077", "022", "027", "002", "000"])
def test_key_files_follow_the_umask(tmp_path: Path, mask: int, expected: int) -> None:
    """Under ``umask 0`` or ``002`` the key files stay 0644: never writable by other users (they
    were 0666 and 0664)."""
    with umask(mask):
        assert new_file_mode(KEY_FILE_MODE) == expected
        txt, params = write_txt_keys(
            tmp_path, "m", KEY, SPEC, test_key=False, rng=np.random.default_rng(0)
        )
        mev = tmp_path / "mev_m_onnx.bin"
        write_mev(
            mev,
            model_name="m",
            fmt_slug="onnx",
            model_sha256="0" * 64,
            key=KEY,
            spec=SPEC,
            kek=bytes(32),
        )
    assert {p.name: mode(p) for p in (txt, params, mev)} == {
        txt.name: expected,
        params.name: expected,
        mev.name: expected,
    }


def test_protection_under_umask_077_leaves_no_file_to_other_users(workdir: Path) -> None:
    """A protection for both platforms, as a user with ``umask 077`` runs it: no file under
    outputs/ is readable by the group or other users (the key files were 0644)."""
    from skprotect_pytorch.protect import SkProtectorPyTorch

    platforms = SkProtectorPyTorch.ExportPlatform
    with umask(0o077):
        for platform in (platforms.TXT, platforms.LINUX):
            SkProtectorPyTorch(application_name="app").protect_new_model(
                lifecycle_mlp(0),
                "m",
                [LIFECYCLE_INPUT],
                model_export_formats=SkProtectorPyTorch.ExportFormat.ONNX,
                deployment_platform=platform,
            )
    folder = workdir / "outputs" / "app" / "m" / "onnx"
    keys = sorted(p.name for p in folder.iterdir() if p.suffix != ".onnx")
    assert keys == ["key_params_m.json", "key_vector_inv_m.txt", "mev_m_onnx.bin"]
    loose = {p.name: oct(mode(p)) for p in folder.iterdir() if mode(p) & 0o077}
    assert loose == {}
