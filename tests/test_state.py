"""Private protection state: location, permissions, refusal inside outputs/, derivations."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import numpy as np
import pytest

from skprotect_pytorch.errors import SkProtectError, StateError
from skprotect_pytorch.state import ProtectionState


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SKPROTECT_STATE_DIR", raising=False)


def test_default_location_and_permissions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    state = ProtectionState.open("default_app")
    folder = tmp_path / ".skprotect_private" / "default_app"
    assert state.folder == folder
    assert mode(folder) == 0o700
    assert mode(folder.parent) == 0o700
    master = folder / "master.key"
    assert mode(master) == 0o600
    assert len(master.read_bytes()) == 32
    assert sorted(p.name for p in folder.iterdir()) == ["master.key"]


def test_env_var_and_root_argument(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SKPROTECT_STATE_DIR", str(tmp_path / "env_state"))
    assert ProtectionState.open("app").folder == tmp_path / "env_state" / "app"
    assert ProtectionState.open("app", root=tmp_path / "root").folder == tmp_path / "root" / "app"


def test_reopening_is_deterministic(tmp_path: Path) -> None:
    a = ProtectionState.open("app", root=tmp_path)
    b = ProtectionState.open("app", root=tmp_path)
    assert a.public_key_bytes == b.public_key_bytes
    assert len(a.public_key_bytes) == 32
    assert a.kek == b.kek and len(a.kek) == 32
    assert np.array_equal(
        a.key_rng("m", "onnx", 0).integers(0, 2**32, 8),
        b.key_rng("m", "onnx", 0).integers(0, 2**32, 8),
    )
    message = b"payload"
    a.signing_key.public_key().verify(b.signing_key.sign(message), message)


def test_derivations_are_separated(tmp_path: Path) -> None:
    state = ProtectionState.open("app", root=tmp_path)
    other = ProtectionState.open("other_app", root=tmp_path)
    draws = {
        (model, group, epoch): tuple(state.key_rng(model, group, epoch).integers(0, 2**32, 4))
        for model in ("m", "n")
        for group in ("onnx", "cpu", "gpu")
        for epoch in (0, 1)
    }
    assert len(set(draws.values())) == len(draws)
    assert other.kek != state.kek
    assert other.public_key_bytes != state.public_key_bytes


def test_new_master_secret_per_application_folder(tmp_path: Path) -> None:
    a = ProtectionState.open("app", root=tmp_path / "a")
    b = ProtectionState.open("app", root=tmp_path / "b")
    assert a.kek != b.kek


def test_existing_master_is_kept(tmp_path: Path) -> None:
    folder = tmp_path / "app"
    folder.mkdir(mode=0o700)
    (folder / "master.key").write_bytes(bytes(32))
    os.chmod(folder / "master.key", 0o600)
    first = ProtectionState.open("app", root=tmp_path).kek
    assert (folder / "master.key").read_bytes() == bytes(32)
    assert ProtectionState.open("app", root=tmp_path).kek == first


def test_refuses_state_inside_outputs_root(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="inside an 'outputs' folder") as e:
        ProtectionState.open("app", root=tmp_path / "outputs" / "app")
    assert "SKPROTECT_STATE_DIR" in str(e.value)
    assert not (tmp_path / "outputs").exists()


def test_refuses_default_state_when_cwd_is_in_outputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cwd = tmp_path / "outputs" / "default_app"
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    with pytest.raises(StateError, match="inside an 'outputs' folder"):
        ProtectionState.open("default_app")


def test_an_application_named_outputs_is_not_inside_outputs(tmp_path: Path) -> None:
    """Only the folders above the application's own count: an application called 'outputs'
    was refused as if its state were inside a shipped outputs folder."""
    state = ProtectionState.open("outputs", root=tmp_path / "state")
    assert state.folder == tmp_path / "state" / "outputs"
    assert (state.folder / "master.key").is_file()


def test_refuses_group_readable_master(tmp_path: Path) -> None:
    state = ProtectionState.open("app", root=tmp_path)
    os.chmod(state.folder / "master.key", 0o640)
    with pytest.raises(StateError, match="accessible to other users") as e:
        ProtectionState.open("app", root=tmp_path)
    assert "chmod 600" in str(e.value)


def test_refuses_world_accessible_folder(tmp_path: Path) -> None:
    state = ProtectionState.open("app", root=tmp_path)
    os.chmod(state.folder, 0o755)
    with pytest.raises(StateError, match="chmod 700"):
        ProtectionState.open("app", root=tmp_path)


@pytest.mark.parametrize("size", [0, 31, 33])
def test_refuses_wrong_size_master(tmp_path: Path, size: int) -> None:
    state = ProtectionState.open("app", root=tmp_path)
    (state.folder / "master.key").write_bytes(b"x" * size)
    with pytest.raises(StateError, match=f"is {size} bytes, expected 32"):
        ProtectionState.open("app", root=tmp_path)


@pytest.mark.parametrize("name", ["", "../x", ".hidden", "a/b", 3])
def test_invalid_application_name(tmp_path: Path, name: object) -> None:
    with pytest.raises(StateError, match="application_name must be"):
        ProtectionState.open(name, root=tmp_path)  # type: ignore[arg-type]


def test_key_rng_arguments(tmp_path: Path) -> None:
    state = ProtectionState.open("app", root=tmp_path)
    with pytest.raises(StateError, match="epoch must be an integer >= 0"):
        state.key_rng("m", "onnx", -1)
    with pytest.raises(StateError, match="group_value must be a non-empty string"):
        state.key_rng("m", "", 0)


def test_export_kek(tmp_path: Path) -> None:
    state = ProtectionState.open("app", root=tmp_path / "state")
    path = state.export_kek(tmp_path / "server" / "app.kek")
    assert mode(path) == 0o600
    assert base64.b64decode(path.read_text().strip()) == state.kek


def test_export_kek_refuses_outputs(tmp_path: Path) -> None:
    state = ProtectionState.open("app", root=tmp_path / "state")
    with pytest.raises(StateError, match="inside an 'outputs' folder"):
        state.export_kek(tmp_path / "outputs" / "app" / "kek.txt")
    assert not (tmp_path / "outputs").exists()


def test_repr_and_errors_hide_secrets(tmp_path: Path) -> None:
    state = ProtectionState.open("app", root=tmp_path)
    master = (state.folder / "master.key").read_bytes()
    text = repr(state)
    assert "app" in text
    assert master.hex() not in text and state.kek.hex() not in text
    assert issubclass(StateError, SkProtectError)
