"""Migrating a LINUX version-0 configuration whose encrypted key file cannot be read or is cut
short: the migration used to report the model file as replaced ("not the files their key files
were written for ... Put the old protected models back"), sending the user after the wrong
file. It now names the key file, what is wrong with it, and what to do."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.platforms.v0_migration import ADVICE, EP, deny_reading, protect_v0
from tests.platforms.v0_migration import refused as refused_on

from skprotect_pytorch.protect import SkProtectorPyTorch
from skruntime.config import load_config

MEV = "m/onnx/mev_m_onnx.bin"


@pytest.fixture
def linux_v0_app(workdir: Path) -> SkProtectorPyTorch:
    """A LINUX application at platform version 0 with one ONNX model ``m``."""
    return protect_v0(EP.LINUX)


def refused(protector: SkProtectorPyTorch) -> str:
    return refused_on(protector, EP.LINUX)


def test_an_unreadable_key_file_is_named_as_unreadable(
    linux_v0_app: SkProtectorPyTorch, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Permissions 000 (:func:`deny_reading`)."""
    mev = linux_v0_app.outputs_dir / MEV
    deny_reading(monkeypatch, mev)
    message = refused(linux_v0_app)
    assert f"{mev} cannot be read (Permission denied)" in message
    assert ADVICE in message
    assert "m.onnx" not in message  # the model file is not blamed


@pytest.mark.parametrize("cut", [0, 10, 0.5], ids=["empty", "10-bytes", "half"])
def test_a_truncated_key_file_is_named_as_damaged(
    linux_v0_app: SkProtectorPyTorch, cut: float
) -> None:
    mev = linux_v0_app.outputs_dir / MEV
    data = mev.read_bytes()
    size = int(len(data) * cut) if isinstance(cut, float) else cut
    mev.write_bytes(data[:size])
    message = refused(linux_v0_app)
    assert f"{mev} is truncated ({size} bytes, where a key of 75 values needs at least" in message
    assert ADVICE in message
    assert "Put the old protected models back" not in message


def test_a_file_that_is_no_key_file_is_named_as_damaged(
    linux_v0_app: SkProtectorPyTorch,
) -> None:
    mev = linux_v0_app.outputs_dir / MEV
    mev.write_bytes(b"<html>not found</html>" * 40)
    message = refused(linux_v0_app)
    assert f"{mev} is not an encrypted key file (it does not start with SKMEV1)" in message


def test_the_intact_key_file_migrates(linux_v0_app: SkProtectorPyTorch) -> None:
    path = linux_v0_app.migrate_configuration(1, EP.LINUX)
    assert load_config(path).platform_version == 1
