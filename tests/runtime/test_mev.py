"""LINUX encrypted key files: byte format, round trip, and every way decryption must fail."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from skruntime.errors import KeyFileError
from skruntime.mev import MEV_MAGIC, mev_filename, read_mev, write_mev

KEK = bytes(range(32))
SHA = "cd" * 32


def make_key():
    rng = np.random.default_rng(0)
    key = np.concatenate(
        [rng.permutation(7), rng.permutation(16), rng.uniform(0.5, 2, 5), np.ones(5)]
    ).astype(np.float32)
    return key, {"length": 33, "perm_sizes": [7, 16], "scale_sizes": [5]}


def write(path: Path, **overrides) -> None:
    key, spec = make_key()
    args = dict(model_name="mlp", fmt_slug="onnx", model_sha256=SHA, key=key, spec=spec, kek=KEK)
    write_mev(path, **(args | overrides))


def read(path: Path, **overrides):
    args = dict(model_name="mlp", fmt_slug="onnx", model_sha256=SHA, kek=KEK)
    return read_mev(path, **(args | overrides))


def test_filename() -> None:
    assert mev_filename("mlp", "inductor_cpu") == "mev_mlp_inductor_cpu.bin"
    with pytest.raises(ValueError, match="fmt_slug must be one of"):
        mev_filename("mlp", "tflite")


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / mev_filename("mlp", "onnx")
    write(path)
    material = read(path)
    key, spec = make_key()
    assert material.static_key().tobytes() == key.tobytes()
    assert material.spec == spec
    assert str(key[0]) not in repr(material).replace("length=33", "")


def test_byte_format(tmp_path: Path) -> None:
    """Decrypt by hand from the documented layout: magic, nonce, AES-GCM(plaintext), AAD."""
    path = tmp_path / "k.bin"
    write(path)
    data = path.read_bytes()
    assert data[:6] == MEV_MAGIC == b"SKMEV1"
    nonce, ciphertext = data[6:18], data[18:]
    aad = b'{"format":"onnx","model":"mlp","sha256":"' + SHA.encode() + b'"}'
    plain = AESGCM(KEK).decrypt(nonce, ciphertext, aad)
    header_len = int.from_bytes(plain[:4], "little")
    header = json.loads(plain[4 : 4 + header_len])
    assert header == {"format": "skprotect-mev-key", "version": 1, "spec": make_key()[1]}
    key = np.frombuffer(plain[4 + header_len :], dtype="<f4")
    assert key.tobytes() == make_key()[0].astype("<f4").tobytes()
    assert len(data) == 6 + 12 + 4 + header_len + 4 * 33 + 16


def test_fresh_nonce_each_write(tmp_path: Path) -> None:
    write(tmp_path / "a.bin")
    write(tmp_path / "b.bin")
    assert (tmp_path / "a.bin").read_bytes()[6:18] != (tmp_path / "b.bin").read_bytes()[6:18]


@pytest.mark.parametrize(
    "overrides",
    [
        {"kek": bytes(32)},
        {"model_name": "other"},
        {"fmt_slug": "inductor_cpu"},
        {"model_sha256": "ef" * 32},
    ],
    ids=["wrong_kek", "wrong_model", "wrong_format", "wrong_sha256"],
)
def test_wrong_context_fails(tmp_path: Path, overrides: dict) -> None:
    path = tmp_path / "k.bin"
    write(path)
    with pytest.raises(KeyFileError, match="cannot be decrypted") as e:
        read(path, **overrides)
    assert str(path) in str(e.value)


def test_a_wrong_kek_names_where_the_kek_comes_from(tmp_path: Path) -> None:
    """A wrong ``kek=`` (``--kek``) was answered "Check the licence", with no licence in use."""
    path = tmp_path / "k.bin"
    write(path)
    with pytest.raises(KeyFileError) as e:
        read(path, kek=bytes(32))
    assert "Check the key-encryption key (kek=, skprotect run --kek: the one " in str(e.value)


@pytest.mark.parametrize("offset", [7, 20, -1], ids=["nonce", "ciphertext", "tag"])
def test_tampered_byte_fails(tmp_path: Path, offset: int) -> None:
    path = tmp_path / "k.bin"
    write(path)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(KeyFileError, match="cannot be decrypted"):
        read(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match=r"k\.bin not found"):
        read(tmp_path / "k.bin")


def test_an_unreadable_file_says_what_to_do(tmp_path: Path) -> None:
    """A folder where the key file belongs: the error gave errno's text and no way out."""
    (tmp_path / "k.bin").mkdir()
    with pytest.raises(KeyFileError) as e:
        read(tmp_path / "k.bin")
    assert str(e.value) == (
        f"Encrypted key file {tmp_path / 'k.bin'} is a folder, not a regular file: it cannot "
        "be read as a key. Replace it with the file the protector wrote (copy it from the "
        "protector's outputs/ folder), or re-protect the model."
    )


def test_bad_magic(tmp_path: Path) -> None:
    path = tmp_path / "k.bin"
    write(path)
    path.write_bytes(b"XXMEV1" + path.read_bytes()[6:])
    with pytest.raises(KeyFileError, match="bad magic"):
        read(path)


def test_truncated(tmp_path: Path) -> None:
    path = tmp_path / "k.bin"
    write(path)
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(KeyFileError, match="is truncated"):
        read(path)


def test_truncated_ciphertext_fails_tag(tmp_path: Path) -> None:
    path = tmp_path / "k.bin"
    write(path)
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(KeyFileError, match="cannot be decrypted"):
        read(path)


def _encrypt_plaintext(path: Path, plaintext: bytes) -> None:
    nonce = bytes(12)
    aad = b'{"format":"onnx","model":"mlp","sha256":"' + SHA.encode() + b'"}'
    path.write_bytes(MEV_MAGIC + nonce + AESGCM(KEK).encrypt(nonce, plaintext, aad))


def _framed(header: bytes) -> bytes:
    return len(header).to_bytes(4, "little") + header


@pytest.mark.parametrize(
    ("plaintext", "message"),
    [
        (b"", "no header"),
        (b"\xff\xff\x00\x00{}", "header length out of range"),
        (b"\x02\x00\x00\x00{x", "header is not JSON"),
        (b"\x02\x00\x00\x00{}", "unknown header format"),
        (_framed(b'{"format":"skprotect-mev-key","version":9}'), "has version 9"),
    ],
)
def test_malformed_plaintext(tmp_path: Path, plaintext: bytes, message: str) -> None:
    path = tmp_path / "k.bin"
    _encrypt_plaintext(path, plaintext)
    with pytest.raises(KeyFileError, match=message):
        read(path)


def test_wrong_key_length_in_plaintext(tmp_path: Path) -> None:
    header = json.dumps(
        {"format": "skprotect-mev-key", "version": 1, "spec": make_key()[1]}
    ).encode()
    path = tmp_path / "k.bin"
    _encrypt_plaintext(path, len(header).to_bytes(4, "little") + header + bytes(8))
    with pytest.raises(KeyFileError, match="8 key bytes, expected 132"):
        read(path)


def test_invalid_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="kek must be 32 bytes, but got 16"):
        write(tmp_path / "k.bin", kek=bytes(16))
    with pytest.raises(ValueError, match="model_sha256 must be 64 lower-case hex"):
        write(tmp_path / "k.bin", model_sha256="ABC")
    with pytest.raises(ValueError, match="not a permutation"):
        key, _ = make_key()
        key[0] = key[1]
        write(tmp_path / "k.bin", key=key)
