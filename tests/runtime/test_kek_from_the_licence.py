"""A LINUX key file that the key-encryption key released by the licence does not open: the
message told the user to check ``kek=`` / ``--kek``, which they had not given, "or the licence
that releases it". It now says the KEK came from the licence server and how to give the server
the application's own KEK; a KEK given to the runtime keeps its own advice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from skruntime.errors import KeyFileError
from skruntime.keysource import KeyUnlock
from skruntime.mev import LinuxKeySource, mev_filename, write_mev

KEK = bytes(range(32))
SHA = "cd" * 32
SPEC = {"length": 4, "perm_sizes": [2], "scale_sizes": [1]}


@pytest.fixture
def source_files(tmp_path: Path) -> tuple[Path, list[str]]:
    name = mev_filename("m", "onnx")
    key = np.array([1, 0, 0.5, 1], dtype=np.float32)
    write_mev(
        tmp_path / "m" / name, model_name="m", fmt_slug="onnx", model_sha256=SHA, key=key,
        spec=SPEC, kek=KEK,
    )  # fmt: skip
    return tmp_path, [f"m/{name}"]


def refused(outputs: Path, key_files: list[str], unlock: KeyUnlock) -> str:
    """The message of reading the key file with ``unlock``, whose KEK is wrong."""
    with pytest.raises(KeyFileError) as err:
        LinuxKeySource(outputs, outputs / "skrpl", unlock).read("m", "onnx", key_files, SHA)
    return str(err.value)


def test_a_wrong_kek_from_the_licence_says_to_give_the_server_the_applications(
    source_files: tuple[Path, list[str]],
) -> None:
    outputs, key_files = source_files
    message = refused(outputs, key_files, KeyUnlock(kek=None, from_licence=lambda: bytes(32)))
    assert message == (
        f"Encrypted key file {outputs}/m/mev_m_onnx.bin cannot be decrypted: the key-encryption "
        f"key is wrong, the file was modified, or it belongs to another model, format or model "
        f"file than 'm' / 'onnx' with SHA-256 {SHA[:12]}…. The key-encryption key came from the "
        "licence: check that the licence server holds this application's (`skprotect export-kek "
        "FILE --application-name APP` where the models were protected, then `sklicense app "
        "import-kek APP --kek-file FILE`), and ship the key file written with this model file."
    )
    assert "kek=" not in message


def test_a_wrong_kek_given_to_the_runtime_keeps_its_advice(
    source_files: tuple[Path, list[str]],
) -> None:
    outputs, key_files = source_files
    message = refused(outputs, key_files, KeyUnlock(kek=bytes(32), from_licence=lambda: KEK))
    assert "Check the key-encryption key (kek=, skprotect run --kek: the one " in message
    assert "came from the licence" not in message


def test_the_licences_right_kek_opens_the_key_file(source_files: tuple[Path, list[str]]) -> None:
    outputs, key_files = source_files
    source = LinuxKeySource(
        outputs, outputs / "skrpl", KeyUnlock(kek=None, from_licence=lambda: KEK)
    )
    assert source.read("m", "onnx", key_files, SHA).length == 4
