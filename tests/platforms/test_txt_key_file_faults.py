"""Migrating a TXT version-0 configuration whose key-params file cannot be read or is damaged:
the migration went ahead (the SHA-256 it needs to compare was taken as "not recorded") and left
the runtime to refuse the model later; it now names the key file and what to do, as for LINUX."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.platforms.v0_migration import ADVICE, EP, deny_reading, protect_v0
from tests.platforms.v0_migration import refused as refused_on

from skprotect_pytorch.protect import SkProtectorPyTorch

PARAMS = "m/onnx/key_params_m.json"


@pytest.fixture
def txt_v0_app(workdir: Path) -> SkProtectorPyTorch:
    """A TXT application at platform version 0 with one ONNX model ``m``."""
    return protect_v0(EP.TXT)


def refused(protector: SkProtectorPyTorch) -> str:
    return refused_on(protector, EP.TXT)


def test_an_unreadable_key_params_file_is_named(
    txt_v0_app: SkProtectorPyTorch, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Permissions 000 (:func:`deny_reading`)."""
    params = txt_v0_app.outputs_dir / PARAMS
    deny_reading(monkeypatch, params)
    message = refused(txt_v0_app)
    assert f"{params} cannot be read (Permission denied)" in message
    assert ADVICE in message


@pytest.mark.parametrize(
    ("content", "problem"),
    [(b'{"model_sha', "not JSON"), (b"[1, 2]", "not a JSON object"), (b"", "not JSON")],
)
def test_a_damaged_key_params_file_is_named(
    txt_v0_app: SkProtectorPyTorch, content: bytes, problem: str
) -> None:
    params = txt_v0_app.outputs_dir / PARAMS
    params.write_bytes(content)
    message = refused(txt_v0_app)
    assert f"{params} is not a key-params file ({problem}" in message
    assert ADVICE in message


def test_an_intact_txt_configuration_migrates(txt_v0_app: SkProtectorPyTorch) -> None:
    txt_v0_app.migrate_configuration(1, EP.TXT)
