"""A ``--server-public-key`` file that holds no public key is named as such, and the server's
private signing key (``server.key``, the one key file ``sklicense init`` writes, which a user
may take for the key to pin) is named as a private key to keep on the server: both were told
"--server-public-key must be a file holding the licence server's public key", though they were
files. A PEM public key (``openssl pkey -in server.key -pubout``) was said to hold no public
key: it is read, and so are an OpenSSH public-key line and a DER public key (until 2026-12-07
both were said to hold no public key)."""

from __future__ import annotations

import base64
import datetime
from pathlib import Path

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa, x25519
from cryptography.x509.oid import NameOID
from typer.testing import CliRunner

from sklicense.crypto import create_signing_key
from skprotect_pytorch.cli import app as cli_app
from skruntime.cli_keys import read_kek, read_server_public_key

EXPECTED = (
    "pass a file holding the licence server's 32-byte Ed25519 public key (raw, base64, PEM, DER or "
    "an OpenSSH public-key line) or that key's base64 text, which `sklicense init` prints."
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


def pem(public_key, encoding: serialization.Encoding = serialization.Encoding.PEM) -> bytes:
    """``public_key`` as ``openssl pkey -pubout`` writes it (``-outform DER``: ``Encoding.DER``)."""
    return public_key.public_bytes(encoding, serialization.PublicFormat.SubjectPublicKeyInfo)


def assert_each_refused(tmp_path: Path, key_file: Path, said: dict[bytes, str]) -> None:
    """Each content of ``said`` in ``key_file`` is refused (exit 2) with its message."""
    for number, (content, message) in enumerate(said.items()):
        key_file.write_bytes(content)
        (tmp_path / str(number)).mkdir()
        assert run_with_server_key(tmp_path / str(number), key_file) == (
            2,
            f"error: --server-public-key {key_file} {message}\n",
        ), number


def test_a_pem_public_key_is_read(tmp_path: Path) -> None:
    public = ed25519.Ed25519PrivateKey.generate().public_key()
    key_file = tmp_path / "server.pem"
    key_file.write_bytes(b"\n" + pem(public))
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert read_server_public_key(str(key_file)) == raw
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


def certificate(signer: ed25519.Ed25519PrivateKey) -> bytes:
    """A self-signed certificate of ``signer``'s public key, in PEM."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "licence server")])
    now = datetime.datetime.now(datetime.UTC)
    built = x509.CertificateBuilder().subject_name(name).issuer_name(name)
    built = built.public_key(signer.public_key()).serial_number(1).not_valid_before(now)
    signed = built.not_valid_after(now + datetime.timedelta(days=1)).sign(signer, None)
    return signed.public_bytes(serialization.Encoding.PEM)


def private_pem(kind: serialization.PrivateFormat, encryption) -> bytes:
    """A fresh Ed25519 private key in PEM, as ``kind`` writes it."""
    private = ed25519.Ed25519PrivateKey.generate()
    return private.private_bytes(serialization.Encoding.PEM, kind, encryption)


def test_pem_files_holding_no_single_public_key_are_named(tmp_path: Path) -> None:
    """An encrypted or OpenSSH private key and a certificate were said to hold no public key;
    of two public keys the first was pinned without a word."""
    key_file = tmp_path / "server.pem"
    private = (
        "is a private key (the licence server's signing key, server.key?), not its public key: "
        f"keep it on the server only, and {EXPECTED}"
    )
    public = pem(ed25519.Ed25519PrivateKey.generate().public_key())
    said = {
        private_pem(
            serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")
        ): private,
        private_pem(serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()): private,
        public + private_pem(serialization.PrivateFormat.PKCS8, serialization.NoEncryption()): (
            private
        ),
        certificate(ed25519.Ed25519PrivateKey.generate()): (
            "is a certificate, not a public key: extract the key it certifies with "
            f"`openssl x509 -in {key_file} -pubkey -noout > server.pub`, or {EXPECTED}"
        ),
        public
        + public: f"holds 2 PEM blocks (PUBLIC KEY, PUBLIC KEY), not one public key: {EXPECTED}",
        b"-----BEGIN DH PARAMETERS-----\nAAAA\n-----END DH PARAMETERS-----\n": (
            f"is a PEM DH PARAMETERS, not a public key: {EXPECTED}"
        ),
    }
    assert_each_refused(tmp_path, key_file, said)


def test_text_around_a_pem_public_key_is_allowed(tmp_path: Path) -> None:
    """RFC 7468 allows text before and after a block (openssl reads it): a byte-order mark or
    a line naming the key before it was said to hold no public key."""
    public = ed25519.Ed25519PrivateKey.generate().public_key()
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    key_file = tmp_path / "server.pem"
    for before in (b"\xef\xbb\xbf", b"licence server key:\n"):
        key_file.write_bytes(before + pem(public) + b"copied 2026-12-07\n")
        assert read_server_public_key(str(key_file)) == raw


def test_an_x25519_key_is_named(tmp_path: Path) -> None:
    key_file = tmp_path / "server.pem"
    key_file.write_bytes(pem(x25519.X25519PrivateKey.generate().public_key()))
    assert run_with_server_key(tmp_path, key_file) == (
        2,
        f"error: --server-public-key {key_file} holds an X25519PublicKey, but the licence "
        "server signs with Ed25519: pass its public key (`sklicense init` prints it).\n",
    )


def test_the_openssl_command_for_a_certificate_quotes_its_path(tmp_path: Path) -> None:
    """A path with a space was given unquoted, so the command said to run read another file."""
    key_file = tmp_path / "my keys" / "server.pem"
    key_file.parent.mkdir()
    key_file.write_bytes(certificate(ed25519.Ed25519PrivateKey.generate()))
    code, output = run_with_server_key(tmp_path, key_file)
    assert code == 2 and f"`openssl x509 -in '{key_file}' -pubkey -noout" in output, output


def raw_bytes(public_key: ed25519.Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def openssh_line(public_key) -> bytes:
    """``public_key`` as ``ssh-keygen`` writes it in its ``.pub`` file: type, key, comment."""
    line = public_key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return line + b" licence@server\n"


def der(public_key) -> bytes:
    """``public_key`` as ``openssl pkey -pubout -outform DER`` writes it."""
    return pem(public_key, serialization.Encoding.DER)


def test_an_openssh_or_der_public_key_is_read(tmp_path: Path) -> None:
    public = ed25519.Ed25519PrivateKey.generate().public_key()
    key_file = tmp_path / "server.pub"
    contents = {
        "openssh": openssh_line(public),
        "openssh, CRLF, no comment": openssh_line(public).split(b" licence")[0] + b"\r\n",
        "der": der(public),
    }
    for number, (form, content) in enumerate(contents.items()):
        key_file.write_bytes(content)
        assert read_server_public_key(str(key_file)) == raw_bytes(public), form
        (tmp_path / str(number)).mkdir()
        output = run_with_server_key(tmp_path / str(number), key_file)[1]
        assert "--server-public-key" not in output and "No configuration in" in output, output
    assert len(der(public)) == 44 and der(public).startswith(b"\x30\x2a")


def test_44_bytes_of_base64_and_32_raw_bytes_are_not_taken_for_der(tmp_path: Path) -> None:
    """A DER Ed25519 key is 44 bytes, as the base64 text of a raw key is: that text is still
    read as base64, and a raw key that starts as a DER key does is still the raw key."""
    key_file = tmp_path / "server.pub"
    raw = raw_bytes(ed25519.Ed25519PrivateKey.generate().public_key())
    key_file.write_bytes(base64.b64encode(raw))
    assert key_file.stat().st_size == 44 and read_server_public_key(str(key_file)) == raw
    looks_like_der = b"\x30\x2a" + raw[2:]
    key_file.write_bytes(looks_like_der)
    assert read_server_public_key(str(key_file)) == looks_like_der


def test_openssh_and_der_keys_of_another_kind_or_private_are_named(tmp_path: Path) -> None:
    key_file = tmp_path / "server.pub"
    other_kind = (
        "but the licence server signs with Ed25519: pass its public key (`sklicense init` "
        "prints it)."
    )
    private_key = (
        "is a private key (the licence server's signing key, server.key?), not its public key: "
        f"keep it on the server only, and {EXPECTED}"
    )
    private = ed25519.Ed25519PrivateKey.generate()
    ed_line = openssh_line(private.public_key())
    rsa_line = openssh_line(rsa.generate_private_key(65537, 2048).public_key())
    said = {
        rsa_line: f"holds an RSAPublicKey, {other_kind}",
        openssh_line(ec.generate_private_key(ec.SECP256R1()).public_key()): (
            f"holds an ECPublicKey, {other_kind}"
        ),
        der(x25519.X25519PrivateKey.generate().public_key()): (
            f"holds an X25519PublicKey, {other_kind}"
        ),
        private.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ): private_key,
        private.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        ): private_key,
        ed_line + rsa_line: (
            f"holds 2 OpenSSH public keys (ssh-ed25519, ssh-rsa), not one: {EXPECTED}"
        ),
    }
    assert_each_refused(tmp_path, key_file, said)
    key_file.write_bytes(ed_line[:60])  # cut short
    (tmp_path / "cut").mkdir()
    code, output = run_with_server_key(tmp_path / "cut", key_file)
    assert code == 2 and "is an OpenSSH public key that cannot be read (" in output, output


def test_a_byte_order_mark_before_an_openssh_line_or_base64_is_allowed(tmp_path: Path) -> None:
    """An editor's byte-order mark (Windows Notepad writes one) before the key line or the
    base64 text: the file was said to hold no public key, though one before a PEM block was
    allowed."""
    public = ed25519.Ed25519PrivateKey.generate().public_key()
    key_file = tmp_path / "server.pub"
    for text in (openssh_line(public), base64.b64encode(raw_bytes(public)) + b"\r\n"):
        key_file.write_bytes(b"\xef\xbb\xbf" + text)
        assert read_server_public_key(str(key_file)) == raw_bytes(public), text


def test_a_file_longer_than_a_key_file_is_refused_not_its_first_key_pinned(tmp_path: Path) -> None:
    """Only the first 4,096 bytes are read: a second key after them went unseen, and the first
    was pinned without a word (two keys within them are refused), or a count of the keys in
    the part read was given as the file's."""
    first, second = (ed25519.Ed25519PrivateKey.generate().public_key() for _ in range(2))
    notes = b"# " + b"-" * 78 + b"\n"
    key_file = tmp_path / "server.pub"
    for number, form in enumerate((openssh_line, pem)):
        key_file.write_bytes(form(first) + notes * 60 + form(second))
        (tmp_path / str(number)).mkdir()
        assert run_with_server_key(tmp_path / str(number), key_file) == (
            2,
            f"error: --server-public-key {key_file} is larger than 4,096 bytes, more than a "
            f"public key file holds: {EXPECTED}\n",
        ), form


def test_a_known_hosts_or_authorized_keys_line_is_named(tmp_path: Path) -> None:
    """Host names or options before the key type: said to hold no public key, though it holds
    one, an SSH host's or user's (not the licence server's); beside a key line, that line's key
    was taken."""
    public = ed25519.Ed25519PrivateKey.generate().public_key()
    line = openssh_line(public)
    key_file = tmp_path / "server.pub"
    for number, before in enumerate(
        (b"licence.example.com,10.0.0.1 ", b"|1|aGFzaA==|c2FsdA== ", b'from="10.0.0.*",no-pty ')
    ):
        for content in (before + line, line + before + line):
            key_file.write_bytes(content)
            folder = tmp_path / f"{number}-{len(content)}"
            folder.mkdir()
            assert run_with_server_key(folder, key_file) == (
                2,
                f"error: --server-public-key {key_file} holds an OpenSSH key after other text on "
                "its line (a known_hosts or authorized_keys line: an SSH host's or user's key, "
                f"not the licence server's): {EXPECTED}\n",
            ), content


def test_a_line_of_a_word_and_base64_is_no_key_line(tmp_path: Path) -> None:
    """Only an OpenSSH key type starts a key line: a note such as ``key AAAA...`` beside the
    key line made a file "hold 2 OpenSSH public keys (key, ssh-ed25519)"."""
    public = ed25519.Ed25519PrivateKey.generate().public_key()
    key_file = tmp_path / "server.pub"
    key_file.write_bytes(b"backup AAAAbGljZW5jZQ==\n" + openssh_line(public))
    assert read_server_public_key(str(key_file)) == raw_bytes(public)


def test_a_byte_order_mark_before_a_kek_file_s_base64_is_allowed(tmp_path: Path) -> None:
    """``--kek`` reads its base64 text as ``--server-public-key`` does: with the mark too."""
    kek = bytes(range(32))
    kek_file = tmp_path / "kek.b64"
    kek_file.write_bytes(b"\xef\xbb\xbf" + base64.b64encode(kek) + b"\n")
    kek_file.chmod(0o600)
    assert read_kek(str(kek_file)) == kek
