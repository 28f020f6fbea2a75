"""A ``--server-public-key`` file that holds no public key is named as such, and the server's
private signing key (``server.key``, the one key file ``sklicense init`` writes, which a user
may take for the key to pin) is named as a private key to keep on the server: both were told
"--server-public-key must be a file holding the licence server's public key", though they were
files. A PEM public key (``openssl pkey -in server.key -pubout``) was said to hold no public
key: it is read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from typer.testing import CliRunner

from sklicense.crypto import create_signing_key
from skprotect_pytorch.cli import app as cli_app
from skruntime.cli import _read_server_public_key

EXPECTED = (
    "pass a file holding the licence server's 32-byte Ed25519 public key (raw, base64 or PEM) or "
    "that key's base64 text, which `sklicense init` prints."
)


def run_with_server_key(tmp_path: Path, key_file: Path) -> tuple[int, str]:
    """Exit code and output of ``skprotect run`` pinning ``key_file`` (an empty outputs folder:
    the key is read before the configuration)."""
    (tmp_path / "app").mkdir()
    np.save(tmp_path / "x.npy", np.zeros((1, 4), np.float32))
    args = ["run", str(tmp_path / "app"), "net", "-i", str(tmp_path / "x.npy")]
    args += ["--licence-server", "http://127.0.0.1:9", "--server-public-key", str(key_file)]
    result = CliRunner().invoke(cli_app, args)
    return result.exit_code, result.output


def test_the_servers_private_key_is_named_as_such(tmp_path: Path) -> None:
    key_file = tmp_path / "state" / "server.key"
    create_signing_key(key_file)
    assert run_with_server_key(tmp_path, key_file) == (
        2,
        f"error: --server-public-key {key_file} is a private key (the licence server's signing "
        f"key, server.key?), not its public key: keep it on the server only, and {EXPECTED}\n",
    )


@pytest.mark.parametrize("content", [b"not a key\n", b"\x00" * 31])
def test_a_file_without_a_key_is_named(tmp_path: Path, content: bytes) -> None:
    key_file = tmp_path / "server.pub"
    key_file.write_bytes(content)
    assert run_with_server_key(tmp_path, key_file) == (
        2,
        f"error: --server-public-key {key_file} holds no public key: {EXPECTED}\n",
    )


def pem(public_key) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_a_pem_public_key_is_read(tmp_path: Path) -> None:
    public = ed25519.Ed25519PrivateKey.generate().public_key()
    key_file = tmp_path / "server.pem"
    key_file.write_bytes(b"\n" + pem(public))
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert _read_server_public_key(str(key_file)) == raw
    output = run_with_server_key(tmp_path, key_file)[1]  # read: the empty folder is next
    assert "--server-public-key" not in output and "No configuration in" in output, output


def test_a_pem_key_of_another_kind_or_damaged_is_named(tmp_path: Path) -> None:
    key_file = tmp_path / "server.pem"
    key_file.write_bytes(pem(ec.generate_private_key(ec.SECP256R1()).public_key()))
    assert run_with_server_key(tmp_path, key_file) == (
        2,
        f"error: --server-public-key {key_file} holds an ECPublicKey, but the licence server "
        "signs with Ed25519: pass its public key (`sklicense init` prints it).\n",
    )
    key_file.write_bytes(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    (tmp_path / "again").mkdir()
    code, output = run_with_server_key(tmp_path / "again", key_file)
    assert code == 2 and "is a PEM public key that cannot be read (" in output, output
    assert "`openssl pkey -in server.key -pubout`" in output
