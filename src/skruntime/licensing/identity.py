"""The device identity: a device id and two key pairs, created on first run, owner-only.

Files in the runtime's state folder (:func:`default_state_dir`: ``$SKRUNTIME_STATE_DIR``, else
``~/.local/state/skruntime``; created with mode 0700):

``device.key`` (mode 0600, the secret; authoritative)::

    {"format": "skruntime-device-key", "version": 1, "device_id": "<uuid4 hex>",
     "signing_key": "<base64 raw Ed25519 private key>",
     "exchange_key": "<base64 raw X25519 private key>"}

``device.json`` (mode 0600, public facts, for operators provisioning the device)::

    {"device_id": ..., "signing_public_key": <base64>, "exchange_public_key": <base64>}

A key file readable or writable by group or others is refused (:class:`LicenceError` saying
which ``chmod`` fixes it). Two processes starting together on a fresh folder end with one identity:
``device.key`` is published with a no-clobber hard link.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from ..config import atomic_write_bytes, fsync_dir, write_all
from ..errors import LicenceError
from ..files import open_regular
from . import protocol

try:  # POSIX advisory locks; without them (Windows) state updates are not cross-process safe
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

STATE_DIR_ENV = "SKRUNTIME_STATE_DIR"
DEFAULT_STATE_DIR = "~/.local/state/skruntime"
KEY_FILENAME = "device.key"
DEVICE_FILENAME = "device.json"
KEY_FORMAT = "skruntime-device-key"
_MAX_STATE_BYTES = 1 << 20


def default_state_dir() -> Path:
    """``$SKRUNTIME_STATE_DIR`` when set, else ``~/.local/state/skruntime``."""
    return Path(os.environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR).expanduser()


def ensure_state_dir(state_dir: str | os.PathLike[str] | None) -> Path:
    """Create the state folder (mode 0700) if needed; tighten an existing one to 0700. An empty
    path is refused: it would be the current folder, made owner-only and filled with keys."""
    if state_dir is not None and os.fspath(state_dir) in ("", b""):
        raise LicenceError(
            f"state_dir is empty. Pass the folder for the runtime's state, or None for "
            f"${STATE_DIR_ENV} or {DEFAULT_STATE_DIR}."
        )
    path = Path(state_dir).expanduser() if state_dir is not None else default_state_dir()
    try:
        # absolute: the client reads and writes its state later, after the application may
        # have changed its working folder (a daemon's chdir("/")), which made a relative
        # folder name another one (every count, renewal and close failed, or forked the state)
        path = path.absolute()
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            os.chmod(path, 0o700)
    except OSError as e:
        # "File exists" for a file at the path (or above it) would read as a folder that exists
        blocking = next((p for p in (path, *path.parents) if os.path.lexists(p)), None)
        problem = (
            f"{blocking} is a file, not a folder"
            if blocking is not None and not blocking.is_dir()
            else e.strerror or e
        )
        raise LicenceError(
            f"Cannot create the runtime's state folder {path}: {problem}. Set "
            f"{STATE_DIR_ENV} or pass state_dir= to a writable folder."
        ) from None
    return path


def _state_error(path: Path, err: OSError) -> LicenceError:
    return LicenceError(
        f"Cannot write {path}: {err.strerror or err}. The runtime keeps its licence, counters "
        f"and clock in {path.parent}: free space there or make it writable (or set "
        f"{STATE_DIR_ENV} / pass state_dir= to another folder)."
    )


def write_private(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically with an owner-only (0600) file; a full or read-only folder
    raises :class:`LicenceError` naming it, and leaves the old file whole."""
    try:
        atomic_write_bytes(path, data, mode=0o600)
    except OSError as e:
        raise _state_error(path, e) from None


class UnsafeFileError(LicenceError):
    """A state file that group or others may access."""


def read_private(path: Path) -> bytes:
    """Read an owner-only file; refuse one that group or others may read or write, and one
    that is not a regular file (:class:`~skruntime.files.NotRegularFileError`, an ``OSError``:
    a named pipe would block the process for ever, a device never end)."""
    with open_regular(path) as f:
        st = os.fstat(f.fileno())
        if stat.S_IMODE(st.st_mode) & 0o077:
            raise UnsafeFileError(
                f"{path} is accessible by group or others (mode "
                f"{stat.S_IMODE(st.st_mode):04o}); it holds device secrets or licence state. "
                f"Run `chmod 600 {path}` and check who could have copied it."
            )
        if st.st_size > _MAX_STATE_BYTES:
            raise LicenceError(f"{path} is larger than any state file; remove it.")
        return f.read(_MAX_STATE_BYTES + 1)


class MalformedStateError(LicenceError):
    """A state file that is not JSON (truncated, edited); ``problem`` says how, for callers
    that know what the file holds and what to do about it."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path} is not valid JSON ({problem}); it was truncated or edited.")
        self.problem = problem


def read_private_json(path: Path) -> Any | None:
    """The JSON in an owner-only file, or None when the file does not exist.

    Raises:
        UnsafeFileError: group or others may access it.
        MalformedStateError: not UTF-8 JSON, or nested deeper than the parser takes.
        LicenceError: it cannot be read, or it is larger than any state file.
    """
    try:
        data = read_private(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise LicenceError(f"Cannot read {path}: {e.strerror or e}.") from None
    try:
        return json.loads(data.decode("utf-8"))
    except RecursionError:
        raise MalformedStateError(path, "nested too deeply") from None
    except ValueError as e:  # UnicodeDecodeError and JSONDecodeError included
        raise MalformedStateError(path, str(e)[:120]) from None


@contextlib.contextmanager
def state_lock(
    state_dir: Path, name: str = "state", *, wait_seconds: float | None = None
) -> Iterator[bool]:
    """An exclusive advisory lock on ``<state_dir>/.<name>.lock`` (no-op without fcntl); yields
    whether it is held. ``wait_seconds``: give up after that long (0: at once) and yield False,
    holding nothing; None waits for as long as it takes."""
    if fcntl is None:  # pragma: no cover
        yield True
        return
    path = state_dir / f".{name}.lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as e:
        try:  # a read-only folder: an existing lock file still locks when opened to read
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            raise _state_error(path, e) from None
    try:
        yield _flock(fd, wait_seconds)
    finally:
        os.close(fd)  # closing releases the lock


_LOCK_POLL_S = 0.02
"""How often a bounded wait for a lock looks whether it is free."""


def _flock(fd: int, wait_seconds: float | None) -> bool:
    """Lock ``fd`` exclusively, waiting at most ``wait_seconds`` (None: for ever)."""
    if wait_seconds is None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return True
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(_LOCK_POLL_S)


def _corrupted_key(key_path: Path, problem: str) -> LicenceError:
    return LicenceError(
        f"Device key file {key_path} is corrupted ({problem}). Restore it from a backup; "
        "removing it creates a new device that must be provisioned again."
    )


def _raw_private(key: Ed25519PrivateKey | X25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


class DeviceIdentity:
    """This device's id, Ed25519 signing key and X25519 key-exchange key.

    >>> identity = DeviceIdentity.load_or_create("/tmp/state")  # doctest: +SKIP
    >>> headers = {protocol.SIGNATURE_HEADER: identity.sign(body)}  # doctest: +SKIP
    """

    def __init__(
        self,
        device_id: str,
        signing_key: Ed25519PrivateKey,
        exchange_key: X25519PrivateKey,
        state_dir: Path,
    ) -> None:
        self.device_id = device_id
        self.signing_key = signing_key
        self.exchange_key = exchange_key
        self.state_dir = state_dir

    def __repr__(self) -> str:
        return f"DeviceIdentity(device_id={self.device_id!r}, state_dir={str(self.state_dir)!r})"

    def __reduce__(self) -> Any:
        raise TypeError("DeviceIdentity cannot be pickled: it holds private keys.")

    @classmethod
    def load_or_create(cls, state_dir: str | os.PathLike[str] | None = None) -> DeviceIdentity:
        """Load the identity from ``state_dir`` (default :func:`default_state_dir`), creating it
        on first run.

        Raises:
            LicenceError: the folder cannot be created, a key file is group/world-accessible,
                or ``device.key`` is corrupted.
        """
        path = ensure_state_dir(state_dir)
        key_path = path / KEY_FILENAME
        if not key_path.exists():
            cls._create(path)
        identity = cls._load(path)
        device_path = path / DEVICE_FILENAME
        public = identity.public_info()
        try:
            current = read_private_json(device_path)
        except (UnsafeFileError, MalformedStateError):  # public facts only: rewrite it
            current = None
        if current != public:
            write_private(device_path, protocol.canonical_bytes(public))
        return identity

    @classmethod
    def _create(cls, path: Path) -> None:
        body = {
            "format": KEY_FORMAT,
            "version": 1,
            "device_id": uuid.uuid4().hex,
            "signing_key": protocol.b64(_raw_private(Ed25519PrivateKey.generate())),
            "exchange_key": protocol.b64(_raw_private(X25519PrivateKey.generate())),
        }
        fd, tmp = tempfile.mkstemp(dir=path, prefix=f".{KEY_FILENAME}.", suffix=".tmp")
        try:
            try:
                os.fchmod(fd, 0o600)
                write_all(fd, protocol.canonical_bytes(body))  # not cut short: linked whole
                os.fsync(fd)
            finally:
                os.close(fd)
            with contextlib.suppress(FileExistsError):  # another process won the race: keep it
                os.link(tmp, path / KEY_FILENAME)
            fsync_dir(path)  # the link survives a power loss, as the device's identity must
        except OSError as e:
            raise LicenceError(
                f"Cannot write the device key in {path}: {e.strerror or e}."
            ) from None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    @classmethod
    def _load(cls, path: Path) -> DeviceIdentity:
        key_path = path / KEY_FILENAME
        try:
            data = read_private_json(key_path)
        except MalformedStateError as e:
            raise _corrupted_key(key_path, e.problem) from None
        try:
            if not isinstance(data, dict) or data.get("format") != KEY_FORMAT:
                raise ValueError("not a device key file")
            if data.get("version") != 1:
                raise ValueError(f"version {data.get('version')!r}, expected 1")
            device_id = data["device_id"]
            if not isinstance(device_id, str) or uuid.UUID(hex=device_id).hex != device_id:
                raise ValueError("device_id is not a uuid4 hex string")
            signing = Ed25519PrivateKey.from_private_bytes(protocol.unb64(data["signing_key"]))
            exchange = X25519PrivateKey.from_private_bytes(protocol.unb64(data["exchange_key"]))
        except (KeyError, TypeError, ValueError, AttributeError) as e:  # AttributeError: unb64
            raise _corrupted_key(key_path, str(e)) from None
        return cls(device_id, signing, exchange, path)

    @property
    def signing_public_key(self) -> bytes:
        """The raw 32-byte Ed25519 public key."""
        return self.signing_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @property
    def exchange_public_key(self) -> bytes:
        """The raw 32-byte X25519 public key."""
        return self.exchange_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @property
    def signing_public_key_b64(self) -> str:
        return protocol.b64(self.signing_public_key)

    @property
    def exchange_public_key_b64(self) -> str:
        return protocol.b64(self.exchange_public_key)

    def public_info(self) -> dict[str, str]:
        """The content of ``device.json``."""
        return {
            "device_id": self.device_id,
            "signing_public_key": self.signing_public_key_b64,
            "exchange_public_key": self.exchange_public_key_b64,
        }

    def sign(self, body: Any) -> str:
        """The ``X-SK-Signature`` header value: base64 Ed25519 over the canonical bytes."""
        return protocol.sign(body, self.signing_key)
