"""LINUX-platform encrypted key files (``mev_<model>_<format>.bin``), one per protected model file.

Byte format (all integers little-endian)::

    offset  size  field
    0       6     magic b"SKMEV1"
    6       12    nonce: 96 random bits, fresh for every file written
    18      rest  AES-256-GCM ciphertext of the plaintext below, followed by its 16-byte tag

    key-encryption key (KEK): 32 bytes, the application's, released only by the licence server
    AAD: canonical JSON (sorted keys, no spaces, UTF-8) of
         {"format": <format slug>, "model": <model name>, "sha256": <model file SHA-256 hex>}
         so a key file only opens for its own model, format and exact model file.

    plaintext:
    0       4     H: length of the header in bytes (uint32)
    4       H     header, canonical JSON: {"format": "skprotect-mev-key", "version": 1,
                                           "spec": {"length", "perm_sizes", "scale_sizes"}}
    4+H     4*L   the canonical key, L = spec.length float32 values

Files larger than :data:`MAX_MEV_BYTES` are refused unread. A wrong KEK, a modified byte, or a
mismatched model/format/SHA-256 all fail the GCM tag check and raise :class:`KeyFileError`.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .config import FORMAT_GROUPS, NAME_RE, atomic_write_bytes, canonical_json
from .errors import KeyFileError, KeyUnavailableError
from .files import KEY_FILE_MODE, NotRegularFileError, new_file_mode, open_regular
from .keyfile import MAX_KEY_LENGTH, KeyMaterial, validate_spec

if TYPE_CHECKING:
    from .keysource import KeyUnlock

MEV_MAGIC = b"SKMEV1"
MEV_HEADER_FORMAT = "skprotect-mev-key"
MEV_VERSION = 1
NONCE_SIZE = 12
TAG_SIZE = 16
KEK_SIZE = 32
_MAX_HEADER = 1 << 26
MAX_MEV_BYTES = len(MEV_MAGIC) + NONCE_SIZE + 4 + _MAX_HEADER + 4 * MAX_KEY_LENGTH + TAG_SIZE
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


def mev_filename(model_name: str, fmt_slug: str) -> str:
    """``mev_<model>_<format>.bin``."""
    _check_ids(model_name, fmt_slug)
    return f"mev_{model_name}_{fmt_slug}.bin"


def _check_ids(model_name: object, fmt_slug: object, model_sha256: object = "0" * 64) -> None:
    if not isinstance(model_name, str) or not NAME_RE.fullmatch(model_name):
        raise ValueError(
            "model_name must be 1-128 characters of letters, digits, '_', '.' or '-', "
            f"but got {model_name!r}."
        )
    if fmt_slug not in FORMAT_GROUPS:
        raise ValueError(
            f"fmt_slug must be one of {', '.join(FORMAT_GROUPS)}, but got {fmt_slug!r}."
        )
    if not isinstance(model_sha256, str) or not _SHA256_RE.fullmatch(model_sha256):
        raise ValueError(
            f"model_sha256 must be 64 lower-case hex digits, but got {model_sha256!r}."
        )


def _check_kek(kek: object) -> bytes:
    if not isinstance(kek, bytes | bytearray) or len(kek) != KEK_SIZE:
        size = len(kek) if isinstance(kek, bytes | bytearray) else type(kek).__name__
        raise ValueError(f"kek must be {KEK_SIZE} bytes, but got {size}.")
    return bytes(kek)


def _aad(model_name: str, fmt_slug: str, model_sha256: str) -> bytes:
    return canonical_json({"model": model_name, "format": fmt_slug, "sha256": model_sha256})


def write_mev(
    path: str | os.PathLike[str],
    *,
    model_name: str,
    fmt_slug: str,
    model_sha256: str,
    key: np.ndarray,
    spec: dict[str, Any],
    kek: bytes,
) -> None:
    """Encrypt ``key`` (stored canonical) under ``kek``, bound to the model file, atomically;
    the file gets the mode of a new file under the process's umask, never write for the group
    or other users.

    Raises:
        ValueError: invalid name, format, SHA-256, KEK, spec or key.
        KeyFileError: the file cannot be written.
    """
    _check_ids(model_name, fmt_slug, model_sha256)
    kek = _check_kek(kek)
    spec = validate_spec(spec)
    try:
        canonical = KeyMaterial(key, spec).static_key()
    except KeyFileError as e:
        raise ValueError(str(e)) from None
    header = canonical_json({"format": MEV_HEADER_FORMAT, "version": MEV_VERSION, "spec": spec})
    plaintext = struct.pack("<I", len(header)) + header + canonical.astype("<f4").tobytes()
    nonce = os.urandom(NONCE_SIZE)
    ciphertext = AESGCM(kek).encrypt(nonce, plaintext, _aad(model_name, fmt_slug, model_sha256))
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # the umask's mode, as the model file gets (a fixed 0644 until 2026-12-07), at most 0644
        atomic_write_bytes(path, MEV_MAGIC + nonce + ciphertext, mode=new_file_mode(KEY_FILE_MODE))
    except OSError as e:
        raise KeyFileError(
            f"Could not write encrypted key file {path}: {e.strerror or e}. Free disk space or "
            "fix the folder's permissions, then protect the model again."
        ) from e


def read_mev(
    path: str | os.PathLike[str],
    *,
    model_name: str,
    fmt_slug: str,
    model_sha256: str,
    kek: bytes,
    kek_from_licence: bool = False,
) -> KeyMaterial:
    """Decrypt an encrypted key file for the given model, format and model-file SHA-256;
    ``kek_from_licence``: the KEK came from a licence (a wrong one is then the server's).

    Raises:
        KeyFileError: missing, not a regular file (a FIFO, a device), truncated or not a key
            file; wrong KEK, modified file, or a key file for another model, format or model
            file (the message names the file).
    """
    _check_ids(model_name, fmt_slug, model_sha256)
    kek = _check_kek(kek)
    path = Path(path)
    try:
        with open_regular(path) as f:
            if os.fstat(f.fileno()).st_size > MAX_MEV_BYTES:
                raise KeyFileError(
                    f"Encrypted key file {path} is larger than any key ({MAX_MEV_BYTES} bytes "
                    "max); it is not a skprotect key file. Restore it or re-protect the model."
                )
            data = f.read(MAX_MEV_BYTES + 1)
    except (FileNotFoundError, NotADirectoryError):  # a folder on its path is a file
        raise KeyFileError(
            f"Encrypted key file {path} not found. Ship the mev_*.bin files written by the "
            "protector next to the configuration, or re-protect the model."
        ) from None
    except NotRegularFileError as e:
        raise KeyFileError(
            f"Encrypted key file {e}: it cannot be read as a key. Replace it with the file the "
            "protector wrote (copy it from the protector's outputs/ folder), or re-protect the "
            "model."
        ) from None
    except OSError as e:
        raise KeyFileError(
            f"Encrypted key file {path} cannot be read: {e.strerror or e}. Make it a file this "
            "user can read: copy it from the protector's outputs/ folder, or fix its permissions."
        ) from None
    minimum = len(MEV_MAGIC) + NONCE_SIZE + TAG_SIZE
    if len(data) > MAX_MEV_BYTES:
        raise KeyFileError(f"Encrypted key file {path} is larger than any key.")
    if not MEV_MAGIC.startswith(data[: len(MEV_MAGIC)]):  # a file cut short is truncated
        raise KeyFileError(
            f"Encrypted key file {path} is not a skprotect key file (bad magic). Restore it or "
            "re-protect the model."
        )
    if len(data) < minimum:
        raise KeyFileError(
            f"Encrypted key file {path} is truncated ({len(data)} bytes, at least {minimum} "
            "needed). Restore it or re-protect the model."
        )
    nonce = data[len(MEV_MAGIC) : len(MEV_MAGIC) + NONCE_SIZE]
    try:
        plaintext = AESGCM(kek).decrypt(
            nonce, data[len(MEV_MAGIC) + NONCE_SIZE :], _aad(model_name, fmt_slug, model_sha256)
        )
    except InvalidTag:
        check = (
            "The key-encryption key came from the licence: check that the licence server holds "
            "this application's (`skprotect export-kek FILE --application-name APP` where the "
            "models were protected, then `sklicense app import-kek APP --kek-file FILE`)"
            if kek_from_licence
            else "Check the key-encryption key (kek=, skprotect run --kek: the one `skprotect "
            "export-kek` writes for this application) or the licence that releases it"
        )
        raise KeyFileError(
            f"Encrypted key file {path} cannot be decrypted: the key-encryption key is wrong, "
            f"the file was modified, or it belongs to another model, format or model file than "
            f"{model_name!r} / {fmt_slug!r} with SHA-256 {model_sha256[:12]}…. {check}, and "
            "ship the key file written with this model file."
        ) from None
    return _parse_plaintext(plaintext, path)


def _parse_plaintext(plaintext: bytes, path: Path) -> KeyMaterial:
    def corrupt(why: str) -> KeyFileError:
        return KeyFileError(
            f"Encrypted key file {path} decrypted but is malformed ({why}); it was written by an "
            "incompatible skprotect. Re-protect the model."
        )

    if len(plaintext) < 4:
        raise corrupt("no header")
    (header_len,) = struct.unpack_from("<I", plaintext)
    if header_len > len(plaintext) - 4:
        raise corrupt("header length out of range")
    try:
        header = json.loads(plaintext[4 : 4 + header_len].decode("utf-8"))
    except (ValueError, RecursionError):
        raise corrupt("header is not JSON") from None
    if not isinstance(header, dict) or header.get("format") != MEV_HEADER_FORMAT:
        raise corrupt("unknown header format")
    if header.get("version") != MEV_VERSION:
        raise KeyFileError(
            f"Encrypted key file {path} has version {header.get('version')!r}; this skruntime "
            f"reads version {MEV_VERSION}. Upgrade skruntime or re-protect the model."
        )
    try:
        spec = validate_spec(header.get("spec"))
    except ValueError as e:
        raise corrupt(str(e)) from None
    body = plaintext[4 + header_len :]
    if len(body) != 4 * spec["length"]:
        raise corrupt(f"{len(body)} key bytes, expected {4 * spec['length']}")
    key = np.frombuffer(body, dtype="<f4").astype(np.float32)
    return KeyMaterial(key, spec, source=str(path))


class LinuxKeySource:
    """The LINUX platform's :class:`~.keysource.KeySource`: the encrypted key file of each
    protected model file, opened with the runtime's ``kek`` or, without one, the key-encryption
    key released by the licence (unwrapped in memory for each load only)."""

    def __init__(self, outputs_dir: Path, config_path: Path, unlock: KeyUnlock) -> None:
        self._outputs_dir = outputs_dir
        self._config_path = config_path
        self._unlock = unlock

    def _kek(self, model_name: str) -> bytes:
        unlock = self._unlock
        if unlock.kek is not None:
            return unlock.kek
        if unlock.from_licence is not None:
            return unlock.from_licence()
        raise KeyUnavailableError(
            f"Model {model_name!r} is protected for the LINUX platform ({self._config_path}): "
            "its key is encrypted and the key-encryption key is released by the licence server. "
            "Pass "
            "licence_server= and server_public_key= (or kek=<32 bytes>) to SkRuntime "
            "(skprotect run: --licence-server URL --server-public-key KEY, or --kek FILE)."
        )

    def read(
        self, model_name: str, fmt: str, key_files: Sequence[str], model_sha256: str
    ) -> KeyMaterial:
        """The key decrypted from the ``mev_<model>_<format>.bin`` file among ``key_files``."""
        kek = self._kek(model_name)
        from_licence = self._unlock.kek is None  # _kek raised if there was no licence either
        name = mev_filename(model_name, fmt)
        mev = [k for k in key_files if k.rsplit("/", 1)[-1] == name]
        if not mev:
            raise KeyFileError(
                f"The configuration {self._config_path} lists no encrypted key file {name} for "
                f"model {model_name!r} ({fmt}). Re-protect the model for the LINUX platform."
            )
        return read_mev(
            self._outputs_dir / mev[0],
            model_name=model_name,
            fmt_slug=fmt,
            model_sha256=model_sha256,
            kek=kek,
            kek_from_licence=from_licence,
        )
