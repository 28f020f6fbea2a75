"""The key files that the runner's options name: ``--kek`` (the LINUX key-encryption key, raw or
base64) and ``--server-public-key`` (the licence server's Ed25519 public key: raw, base64, PEM,
DER or an OpenSSH line, or its base64 text itself), each read and checked with a message that
says what the file is and what to pass instead."""

from __future__ import annotations

import base64
import binascii
import codecs
import os
import re
import shlex
import stat
from pathlib import Path

import typer

from .cli_errors import EXIT_KEY, EXIT_USAGE, CliError, empty_option, not_a_file

__all__ = ["read_kek", "read_server_public_key"]


#: The most bytes read from a key file: a key is 32 bytes raw, 44 in base64 (plus a line end);
#: anything longer is refused, not read to its end (a multi-gigabyte file given by mistake).
_KEY_FILE_LIMIT = 4096


def _key_bytes(data: bytes, *, raw: bool) -> bytes | None:
    """A 32-byte key from ``data``: its base64 text, or (``raw``: a file's bytes) the key itself.
    Never ambiguous: the base64 text of 32 bytes is 44 characters long. None for data over
    :data:`_KEY_FILE_LIMIT` bytes, which :func:`_read_key_file` reads no further."""
    if len(data) > _KEY_FILE_LIMIT:
        return None
    if raw and len(data) == 32:
        return data
    try:  # an editor's byte-order mark (Windows Notepad writes one) before the text
        key = base64.b64decode(data.removeprefix(codecs.BOM_UTF8).strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return key if len(key) == 32 else None


def _read_key_file(path: Path) -> tuple[bytes, int]:
    """Up to :data:`_KEY_FILE_LIMIT` + 1 bytes of a key file, opened only if it is a regular file
    (:func:`~skruntime.files.open_regular`: a named pipe swapped in after a check of the path
    blocked the runner for ever), and the permission bits of the file read. Raises what
    ``open_regular`` raises."""
    from skruntime.files import open_regular

    with open_regular(path) as f:
        return f.read(_KEY_FILE_LIMIT + 1), stat.S_IMODE(os.fstat(f.fileno()).st_mode)


#: What ``--kek`` takes, for its errors.
_KEK_FILE = "the key-encryption key file that `skprotect export-kek` writes"


def read_kek(value: str | os.PathLike[str]) -> bytes:
    """The LINUX key-encryption key from a file: raw 32 bytes, or base64 as ``skprotect
    export-kek`` writes it (like ``--server-public-key``, which takes both). ``value``: the
    option's text as given, not a ``Path`` of it: a path folds ``//`` into ``/``, so a base64
    key holding ``//`` (about one in 100) was no longer recognised as the key, and echoed."""
    from skruntime.files import NotRegularFileError, loose_key_warning
    from skruntime.keysource import kek_encoding

    text = os.fspath(value)
    path = Path(text)
    if problem := empty_option(path, "--kek"):
        raise problem
    if not os.path.lexists(text) and kek_encoding(os.fsencode(text)) is not None:
        # the key itself (--server-public-key takes a key's text): never echo it
        raise CliError(
            "--kek takes the path of a file holding the key-encryption key, but got the key "
            "itself (not repeated here: on a command line, other users see it in the process "
            "list). Pass the file that `skprotect export-kek` writes, readable by this user "
            "only.",
            EXIT_USAGE,
        )
    try:
        data, mode = _read_key_file(path)
    except (NotRegularFileError, FileNotFoundError) as err:  # /dev/null: a device, exit 6
        kind = getattr(err, "kind", None)
        raise not_a_file(path, "--kek", kind, _KEK_FILE) from err
    except OSError as err:  # e.g. no read permission: one line, not errno's bare text
        raise CliError(
            f"--kek {path} cannot be read: {err.strerror or err}. Give this user read access "
            "to the key-encryption key file.",
            EXIT_KEY,
        ) from err
    kek = _key_bytes(data, raw=True)
    if kek is None:
        content = "holds no key-encryption key" if data else "is empty"
        raise CliError(
            f"--kek {path} {content}: expected 32 bytes, raw or base64-encoded; pass {_KEK_FILE}.",
            EXIT_KEY,
        )
    harm = "decrypts every model key of the application"
    if warning := loose_key_warning("--kek", path, mode, harm):  # not refused: see the helper
        typer.echo(f"warning: {warning} (as `skprotect export-kek` writes it).", err=True)
    return kek


def read_server_public_key(value: str) -> bytes:
    """The licence server's raw 32-byte Ed25519 public key: a file holding it (raw, base64,
    PEM, DER or an OpenSSH public-key line), or the base64 text itself (``sklicense init``
    prints it). ``value`` is a file when something exists at that path (base64 text may hold
    ``/``: it names no file)."""
    from skruntime.files import NotRegularFileError

    path = Path(value)
    is_file = os.path.lexists(path)  # False, not an error, for a text too long for a file name
    try:
        data = _read_key_file(path)[0] if is_file else value.encode("ascii", "replace")
    except NotRegularFileError as err:
        raise CliError(
            f"--server-public-key {err}: pass the file holding the licence server's public key "
            "or that key in base64.",
            EXIT_USAGE,
        ) from err
    except OSError as err:  # e.g. no read permission: one usage line, like an unreadable --kek
        raise CliError(
            f"--server-public-key {path} cannot be read: {err.strerror or err}.", EXIT_USAGE
        ) from err
    if is_file and len(data) > _KEY_FILE_LIMIT:  # read no further: a second key may follow
        raise CliError(
            f"--server-public-key {path} is larger than {_KEY_FILE_LIMIT:,} bytes, more than "
            f"a public key file holds: {_EXPECTED_KEY}.",
            EXIT_USAGE,
        )
    if is_file and (labels := _PEM_LABEL.findall(data)):
        return _pem_public_key(path, data, labels)
    key = _key_bytes(data, raw=is_file)  # first: a raw or base64 key is never taken for another
    if key is None and is_file:
        key = _ssh_or_der_public_key(path, data)
    if key is None and is_file:
        raise CliError(
            f"--server-public-key {path} holds no public key: {_EXPECTED_KEY}.", EXIT_USAGE
        )
    if key is None:
        raise CliError(
            f"--server-public-key must be a file holding the licence server's public key or "
            f"that key in base64 (32 bytes; `sklicense init` prints it), but got {value!r}.",
            EXIT_USAGE,
        )
    return key


#: The label of each PEM block (``-----BEGIN PUBLIC KEY-----``: ``PUBLIC KEY``), wherever it is:
#: text before or after a block is allowed (RFC 7468, and openssl reads such files).
_PEM_LABEL = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----")

#: An OpenSSH key type (``ssh-ed25519``, ``ecdsa-sha2-nistp256``, ``sk-ssh-ed25519@openssh.com``)
#: followed by its key in base64, whose first 4 bytes (the type's length) give ``AAAA``.
_SSH_KEY = rb"(?:ssh|ecdsa|sk)-[a-z0-9@.-]+[ \t]+AAAA[A-Za-z0-9+/]+=*"

#: An OpenSSH public-key line (``ssh-ed25519 AAAA... comment``, as ``ssh-keygen`` writes it):
#: the key first, then an optional comment.
_SSH_KEY_LINE = re.compile(rb"^[ \t]*" + _SSH_KEY + rb"(?:[ \t].*)?\r?$", re.M)

#: An OpenSSH key after other text on its line: a ``known_hosts`` line (host names first) or an
#: ``authorized_keys`` line with options (``from="..."``), an SSH host's or user's key.
_SSH_KEY_AFTER_TEXT = re.compile(rb"^[ \t]*[^ \t#\r\n][^\r\n]*?[ \t]" + _SSH_KEY, re.M)

#: What ``--server-public-key`` takes, for its errors.
_EXPECTED_KEY = (
    "pass a file holding the licence server's 32-byte Ed25519 public key (raw, base64, PEM, DER "
    "or an OpenSSH public-key line) or that key's base64 text, which `sklicense init` prints"
)

#: Why a private key is refused, for its errors: the PEM and DER forms say the same.
_PRIVATE_KEY = (
    "is a private key (the licence server's signing key, server.key?), not its public key: "
    f"keep it on the server only, and {_EXPECTED_KEY}."
)


def _pem_public_key(path: Path, data: bytes, labels: list[bytes]) -> bytes:
    """The raw Ed25519 key of a PEM file holding one public key (``openssl pkey -in
    server.key -pubout`` writes one). A private key (plain, encrypted, OpenSSH's), a
    certificate, several blocks, another kind of key or a damaged block is refused saying
    which: each was said to hold no public key, or only the first block was read."""
    names = ", ".join(label.decode() for label in labels)
    if any(label.endswith(b"PRIVATE KEY") for label in labels):
        why = _PRIVATE_KEY
    elif len(labels) > 1:
        why = f"holds {len(labels)} PEM blocks ({names}), not one public key: {_EXPECTED_KEY}."
    elif labels[0] == b"CERTIFICATE":
        why = (
            "is a certificate, not a public key: extract the key it certifies with `openssl x509 "
            f"-in {shlex.quote(str(path))} -pubkey -noout > server.pub`, or {_EXPECTED_KEY}."
        )
    elif not labels[0].endswith(b"PUBLIC KEY"):
        why = f"is a PEM {names}, not a public key: {_EXPECTED_KEY}."
    else:
        return _pem_ed25519_key(path, data)
    raise CliError(f"--server-public-key {path} {why}", EXIT_USAGE)


def _pem_ed25519_key(path: Path, data: bytes) -> bytes:
    """The raw key of the one PEM public key in ``data``, refused unless it is Ed25519."""
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as err:
        raise _unreadable_public_key(path, "a PEM", err) from err
    return _ed25519_bytes(path, key)


def _ssh_or_der_public_key(path: Path, data: bytes) -> bytes | None:
    """The raw key of an OpenSSH public-key line (``ssh-keygen``'s ``.pub`` file) or of a DER
    public key (``openssl pkey -pubout -outform DER``) in ``data``, None if it is neither
    (both were said to hold no public key). Several key lines, a key after other text on its
    line (``known_hosts``, ``authorized_keys``), a DER private key, a damaged key line or
    another kind of key is refused saying which, as a PEM file is. Tried after raw and base64:
    a 32-byte file is a raw key, and base64 text is ASCII, a DER key is not (an Ed25519 one,
    44 bytes like base64 text of 32, starts with ``0x30 0x2a``, ``*`` in ASCII)."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    text = data.removeprefix(codecs.BOM_UTF8)  # an editor's byte-order mark, as for PEM
    if _SSH_KEY_AFTER_TEXT.search(text):
        raise CliError(
            f"--server-public-key {path} holds an OpenSSH key after other text on its line (a "
            "known_hosts or authorized_keys line: an SSH host's or user's key, not the licence "
            f"server's): {_EXPECTED_KEY}.",
            EXIT_USAGE,
        )
    if lines := [match[0].strip() for match in _SSH_KEY_LINE.finditer(text)]:
        if len(lines) > 1:
            names = ", ".join(line.split()[0].decode() for line in lines)
            raise CliError(
                f"--server-public-key {path} holds {len(lines)} OpenSSH public keys ({names}), "
                f"not one: {_EXPECTED_KEY}.",
                EXIT_USAGE,
            )
        try:
            key = serialization.load_ssh_public_key(lines[0])
        except (ValueError, UnsupportedAlgorithm) as err:
            raise _unreadable_public_key(path, "an OpenSSH", err) from err
        return _ed25519_bytes(path, key)
    if not data.startswith(b"\x30"):  # a DER SEQUENCE
        return None
    try:
        key = serialization.load_der_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        try:
            serialization.load_der_private_key(data, password=None)
        except (ValueError, UnsupportedAlgorithm):
            return None  # neither: holds no public key
        except TypeError:  # encrypted: a private key all the same
            pass
        raise CliError(f"--server-public-key {path} {_PRIVATE_KEY}", EXIT_USAGE) from None
    return _ed25519_bytes(path, key)


def _unreadable_public_key(path: Path, form: str, err: Exception) -> CliError:
    """The error for a ``form`` (PEM, OpenSSH) public key that cannot be read."""
    return CliError(
        f"--server-public-key {path} is {form} public key that cannot be read ({err}): "
        "export it again with `openssl pkey -in server.key -pubout`, or pass the base64 "
        "text that `sklicense init` prints.",
        EXIT_USAGE,
    )


def _ed25519_bytes(path: Path, key: object) -> bytes:
    """The raw bytes of ``key`` read from ``path``, refused unless it is an Ed25519 key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if not isinstance(key, Ed25519PublicKey):
        raise CliError(
            f"--server-public-key {path} holds an {type(key).__name__}, but the licence server "
            "signs with Ed25519: pass its public key (`sklicense init` prints it).",
            EXIT_USAGE,
        )
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
