"""Server signing key, licence signing and KEK wrapping (exactly as ``protocol.py`` specifies)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

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
    """Create the Ed25519 server key at ``path`` (PKCS#8 PEM, mode 0600); False if it exists."""
    path = Path(path)
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    os.chmod(path, 0o600)
    return True


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    path = Path(path)
    if not path.exists():
        raise SigningKeyError(
            f"The server signing key {path} does not exist. Run `sklicense init` to create it "
            "(or point SKLICENSE_SIGNING_KEY_FILE at the existing key)."
        )
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as e:
        raise SigningKeyError(f"The server signing key {path} is not a PEM Ed25519 key: {e}") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"The server signing key {path} is not an Ed25519 key.")
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
