"""A licence as the runtime holds it: the ``licence`` object of a signed licence document,
verified with the pinned server keys and parsed (:class:`Licence`), and the application's
key-encryption key it carries for this device (:func:`unwrap_kek`). The document's format is
in docs/licensing.md ("Licence format")."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import LicenceError
from . import protocol

__all__ = ["Licence", "unwrap_kek"]

_KEK_SIZE = 32


def _int_field(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer")
    return value


def _str_field(value: object, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string")
    return value


@dataclass(frozen=True)
class Licence:
    """A verified licence (the ``licence`` object of a signed licence document)."""

    licence_id: str
    device_id: str
    customer_id: int
    application: str
    models: tuple[str, ...]
    issued_at: int
    expires_at: int
    inferences: int | None
    request_nonce: str
    wrapped_kek: dict[str, str] | None = field(default=None, repr=False)
    document: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_document(
        cls, document: object, server_public_keys: Sequence[Ed25519PublicKey]
    ) -> Licence:
        """Verify the server's signature (by any of the pinned ``server_public_keys``) and
        parse the fields.

        Raises:
            LicenceError: not a signed licence document, bad signature, or malformed fields.
        """
        if not isinstance(document, dict) or not isinstance(document.get("licence"), dict):
            raise LicenceError("The licence document is not a {licence, signature} object.")
        body, signature = document["licence"], document.get("signature")
        if not isinstance(signature, str) or not any(
            protocol.verify(body, signature, key) for key in server_public_keys
        ):
            raise LicenceError(
                "The licence's signature does not verify with any pinned server public key: it "
                "was tampered with, or it comes from another licence server. Check "
                "server_public_key and the server URL."
            )
        try:
            models = body["models"]
            if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
                raise ValueError("models must be a list of strings")
            inferences = body.get("inferences")
            if inferences is not None and _int_field(inferences, "inferences") < 0:
                raise ValueError("inferences must be >= 0")
            wrapped = body.get("wrapped_kek")
            if wrapped is not None and not (
                isinstance(wrapped, dict)
                and all(
                    isinstance(wrapped.get(k), str)
                    for k in ("ephemeral_public_key", "nonce", "ciphertext")
                )
            ):
                raise ValueError("wrapped_kek must be null or {ephemeral_public_key, nonce, ...}")
            licence = cls(
                licence_id=_str_field(body["licence_id"], "licence_id"),
                device_id=_str_field(body["device_id"], "device_id"),
                customer_id=_int_field(body["customer_id"], "customer_id"),
                application=_str_field(body["application"], "application"),
                models=tuple(models),
                issued_at=_int_field(body["issued_at"], "issued_at"),
                expires_at=_int_field(body["expires_at"], "expires_at"),
                inferences=inferences,
                request_nonce=_str_field(body["request_nonce"], "request_nonce"),
                wrapped_kek=wrapped,
                document=document,
            )
        except (KeyError, ValueError) as e:
            raise LicenceError(
                f"The licence is signed but malformed ({e}); the server speaks another protocol "
                "version. Upgrade skruntime or the server."
            ) from None
        if licence.expires_at <= licence.issued_at:
            raise LicenceError("The licence expires before it is issued; the server is faulty.")
        return licence


def unwrap_kek(licence: Licence, exchange_key: Any) -> bytes:
    """The application key-encryption key carried by ``licence``, unwrapped with the device's
    X25519 private key (protocol: HKDF-SHA256 of the X25519 shared secret, info
    ``KEK_WRAP_INFO + licence_id``, AES-256-GCM with the licence/device/application as AAD).

    Raises:
        LicenceError: the licence carries no key, or it does not open with this device's key.
    """
    wrapped = licence.wrapped_kek
    if wrapped is None:
        raise LicenceError(
            f"Licence {licence.licence_id} carries no key-encryption key: the server had no "
            f"key for application {licence.application!r} when it issued it. Import the "
            "application's key on the licence server (`skprotect export-kek`, then `sklicense "
            "app import-kek`): the runtime has the licence answered again with it at a later "
            "load (at most once per retry_seconds), uncharged."
        )
    try:
        ephemeral = X25519PublicKey.from_public_bytes(
            protocol.unb64(wrapped["ephemeral_public_key"])
        )
        shared = exchange_key.exchange(ephemeral)
        wrap_key = HKDF(
            algorithm=hashes.SHA256(),
            length=32,
            salt=None,
            info=protocol.KEK_WRAP_INFO + licence.licence_id.encode("utf-8"),
        ).derive(shared)
        aad = protocol.canonical_bytes(
            {
                "licence_id": licence.licence_id,
                "device_id": licence.device_id,
                "application": licence.application,
            }
        )
        kek = AESGCM(wrap_key).decrypt(
            protocol.unb64(wrapped["nonce"]), protocol.unb64(wrapped["ciphertext"]), aad
        )
    except (InvalidTag, ValueError, KeyError) as e:
        raise LicenceError(
            f"The key-encryption key in licence {licence.licence_id} does not open with this "
            f"device's key ({type(e).__name__}): the licence was issued to another device key. "
            "Request a new licence."
        ) from None
    if len(kek) != _KEK_SIZE:
        raise LicenceError(f"The unwrapped key-encryption key has {len(kek)} bytes, not 32.")
    return kek
