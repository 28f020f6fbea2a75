"""Server signing key, licence signing and KEK wrapping (exactly as ``protocol.py`` specifies)."""

from __future__ import annotations

import errno
import os
import secrets
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from skruntime.config import fsync_dir
from skruntime.files import loose_key_warning
from skruntime.licensing.protocol import (
    KEK_WRAP_INFO,
    answer_message,
    b64,
    canonical_bytes,
    sign,
    unb64,
)


class SigningKeyError(RuntimeError):
    """The server signing key is missing or unreadable."""


def create_signing_key(path: Path) -> bool:
    """Create the Ed25519 server key at ``path`` (PKCS#8 PEM, mode 0600); False if it exists.

    The key is written whole to a temporary file beside ``path`` and only then linked into
    place, so that a full disk or an interrupted ``sklicense init`` leaves no empty or partial
    key, which every later ``init`` kept and every start of the server refused. A folder or
    disk that refuses the key is a :class:`SigningKeyError` saying what to do."""
    path = Path(path)
    if path.exists():
        return False
    if path.is_symlink():  # "does not exist: run sklicense init" would send init round in a loop
        raise SigningKeyError(
            f"The server signing key {path} is a symbolic link to {os.readlink(path)}, which does "
            "not exist: remove the link to create a new key there, or restore the key it names."
        )
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return _write_new(path, pem)
    except OSError as err:
        reason = "a file is in the way" if isinstance(err, FileExistsError) else err.strerror
        raise SigningKeyError(
            f"The server signing key {path} cannot be created ({reason or err}): make its "
            f"folder {path.parent} a writable folder with space left, or choose another "
            "(--state-dir, or SKLICENSE_SIGNING_KEY_FILE)."
        ) from err


_NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS}
"""The errors of ``os.link`` on a file system without hard links (FAT, some network shares)."""


def _write_new(path: Path, data: bytes) -> bool:
    """Write ``data`` to the new file ``path`` (mode 0600) all at once: False, and nothing
    written, if ``path`` appeared meanwhile (another ``sklicense init``)."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o600)
        try:
            os.link(temporary, path)  # unlike a rename, never replaces a key
        except FileExistsError:
            return False
        except OSError as err:
            if err.errno not in _NO_HARD_LINKS:
                raise
            if path.exists():
                return False
            os.rename(temporary, path)
        fsync_dir(path.parent)  # the key's name survives a power cut, as its bytes do
        return True
    finally:
        temporary.unlink(missing_ok=True)


def loose_permissions(path: Path) -> str | None:
    """What to do about a server key file that others than its owner may read or write (anyone
    who reads it can sign licences), or None when it is the owner's alone (or unreadable)."""
    try:
        mode = Path(path).stat().st_mode
    except OSError:
        return None
    return loose_key_warning("the server signing key", path, mode, "can sign licences")


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """The server key at ``path``; a missing, unreadable or malformed file is a
    :class:`SigningKeyError` saying what to do."""
    path = Path(path)
    if not path.exists():
        raise SigningKeyError(
            f"The server signing key {path} does not exist. Run `sklicense init` to create it "
            "(or point SKLICENSE_SIGNING_KEY_FILE at the existing key)."
        )
    try:
        data = path.read_bytes()
    except OSError as err:
        raise SigningKeyError(
            f"The server signing key {path} cannot be read ({err.strerror or err}): point "
            "--state-dir or SKLICENSE_SIGNING_KEY_FILE at the key file `sklicense init` created, "
            "and run the server as a user that may read it."
        ) from err
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, Ed25519PrivateKey):
        what = "is empty" if not data.strip() else "is not a PEM Ed25519 private key"
        raise SigningKeyError(
            f"The server signing key {path} {what}: point --state-dir or "
            "SKLICENSE_SIGNING_KEY_FILE at the key `sklicense init` created, or restore it from "
            "a backup (only if no device pinned its public key yet, delete it and run "
            "`sklicense init` again)."
        )
    return key


def public_key_b64(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return b64(raw)


def sign_licence(licence: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """The SignedLicence document ``{"licence": …, "signature": …}``."""
    return {"licence": licence, "signature": sign(licence, key)}


def sign_answer(
    path: str, status: int, request: dict[str, Any], answer: Any, key: Ed25519PrivateKey
) -> str:
    """The ``X-SK-Signature`` of the server's answer to the device ``request`` at ``path``
    (``protocol.answer_message``): bound to that request, so that the device takes no faked or
    replayed answer for the server's word."""
    return sign(answer_message(path, status, canonical_bytes(request), answer), key)


def kek_wrap_key(shared_secret: bytes, licence_id: str) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=None,
        info=KEK_WRAP_INFO + licence_id.encode(),
    ).derive(shared_secret)


def kek_associated_data(licence_id: str, device_id: str, application: str) -> bytes:
    return canonical_bytes(
        {"licence_id": licence_id, "device_id": device_id, "application": application}
    )


def wrap_kek(
    kek: bytes, exchange_public_key_b64: str, licence_id: str, device_id: str, application: str
) -> dict[str, str]:
    """Wrap ``kek`` to the device's X25519 key (ephemeral X25519 + HKDF-SHA256 + AES-256-GCM)."""
    device_key = X25519PublicKey.from_public_bytes(unb64(exchange_public_key_b64))
    ephemeral = X25519PrivateKey.generate()
    key = kek_wrap_key(ephemeral.exchange(device_key), licence_id)
    nonce = os.urandom(12)
    ciphertext = AESGCM(key).encrypt(
        nonce, kek, kek_associated_data(licence_id, device_id, application)
    )
    ephemeral_public = ephemeral.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return {
        "ephemeral_public_key": b64(ephemeral_public),
        "nonce": b64(nonce),
        "ciphertext": b64(ciphertext),
    }
