"""The runtime's licence client: get, verify, cache and renew licences; count inferences.

The wire format is :mod:`skruntime.licensing.protocol`. This is the only skruntime module that
imports ``httpx`` (the ``runtime`` extra installs it); it is imported only when a runtime is given
a licence server.

State files, in the runtime's state folder (see :mod:`.identity`), all owner-only (0600):

``licence_<application>.json``
    the last signed licence document of the server, verified again (signature, device,
    application, customer) every time it is read.
``usage_<application>.json``
    ``{"licences": {"<licence_id>": {"counter": int, "reported": int}}}``: inferences counted
    under each licence, and the counter last acknowledged by the server. Entries of old licences
    are dropped once fully reported.
``clock.json``
    ``{"last_seen": int}``: the latest time this device has seen, for clock-rollback detection.

Timeline. A licence is used as is until ``expires_at - overlap_seconds``. Inside the overlap
window each :meth:`LicenceClient.ensure_licence` tries to renew (at most once per
``retry_seconds`` after a failure); the server starts the new licence at the request time. An
unreachable server (or a denial other than ``device_revoked``) inside the window keeps the cached
licence until it expires; after expiry an unreachable server raises
:class:`LicenceUnavailableError`.

Counting (one :meth:`LicenceClient.consume` per inference). The persisted counter is a
*reservation*: before granting an inference that is not covered yet, the client adds a block of
``persist_every`` inferences (capped at the licence's allowance) to the counter file, under a
file lock, and only then grants. Inferences are then granted from memory until the block is used.
:meth:`LicenceClient.close` gives the unused part of the block back. Trade-off: a crash or kill
counts up to ``persist_every - 1`` inferences that never ran, but the counter never counts fewer
than were run, and the file is written once per ``persist_every`` inferences instead of once per
inference. Several processes sharing one state folder each reserve their own blocks from the same
file, so together they never exceed the allowance; a block given back never lowers the counter
below what the server has already been told (reports are monotonic). ``persist_every=1``
writes the exact count before every inference.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import (
    ClockRollbackError,
    LicenceDeniedError,
    LicenceError,
    LicenceUnavailableError,
    QuotaExhaustedError,
)
from . import protocol
from .identity import (
    DeviceIdentity,
    UnsafeFileError,
    ensure_state_dir,
    read_private_json,
    state_lock,
    write_private,
)

__all__ = ["DEFAULT_OVERLAP_S", "Licence", "LicenceClient", "unwrap_kek"]

log = logging.getLogger(__name__)

DEFAULT_OVERLAP_S = 30 * 24 * 3600
DEFAULT_RETRY_S = 300
DEFAULT_PERSIST_EVERY = 100
#: tolerated clock difference, the server's own timestamp window
DEFAULT_CLOCK_TOLERANCE_S = protocol.TIMESTAMP_WINDOW_S
DEFAULT_REQUESTED_INFERENCES = 10_000
"""Inferences a licence asks for when the customer has a quota (None: all that remains)."""
CLOCK_FILENAME = "clock.json"
_LAST_SEEN_PERSIST_S = 60
_KEK_SIZE = 32


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


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
    def from_document(cls, document: object, server_public_key: Ed25519PublicKey) -> Licence:
        """Verify the server's signature and parse the fields.

        Raises:
            LicenceError: not a signed licence document, bad signature, or malformed fields.
        """
        if not isinstance(document, dict) or not isinstance(document.get("licence"), dict):
            raise LicenceError("The licence document is not a {licence, signature} object.")
        body, signature = document["licence"], document.get("signature")
        if not isinstance(signature, str) or not protocol.verify(
            body, signature, server_public_key
        ):
            raise LicenceError(
                "The licence's signature does not verify with the pinned server public key: it "
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
            f"Licence {licence.licence_id} carries no key-encryption key: the server has no "
            f"key for application {licence.application!r}. Import the application's key on the "
            "licence server (`skprotect export-kek`), then renew the licence."
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


class _Unreachable(Exception):
    """The server could not be reached or answered with a server error."""


class LicenceClient:
    """The licence client of one application on this device.

    Args:
        server_url: base URL of the ``sklicense`` server, e.g. ``https://licence.example``.
        state_dir: the runtime's state folder (None: ``$SKRUNTIME_STATE_DIR`` or
            ``~/.local/state/skruntime``).
        server_public_key: the server's raw 32-byte Ed25519 public key (pinned).
        application, customer_id, models, config_sha256: what the licence is requested for
            (from the signed configuration).
        overlap_seconds: renew this long before expiry (default 30 days).
        timeout: seconds per HTTP request.
        clock: returns the current Unix time (tests).
        transport: an ``httpx`` transport (for tests and custom networking).
        retry_seconds: after a failed renewal, wait this long before trying again.
        persist_every: inferences reserved per counter-file write (see the module docs).
        clock_tolerance: seconds the clock may step back before :class:`ClockRollbackError`.
    """

    def __init__(
        self,
        server_url: str,
        *,
        state_dir: str | os.PathLike[str] | None = None,
        server_public_key: bytes,
        application: str,
        customer_id: int,
        models: Sequence[str],
        config_sha256: str,
        overlap_seconds: float = DEFAULT_OVERLAP_S,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
        transport: httpx.BaseTransport | None = None,
        retry_seconds: float = DEFAULT_RETRY_S,
        persist_every: int = DEFAULT_PERSIST_EVERY,
        clock_tolerance: float = DEFAULT_CLOCK_TOLERANCE_S,
        requested_inferences: int | None = DEFAULT_REQUESTED_INFERENCES,
    ) -> None:
        if requested_inferences is not None and (
            isinstance(requested_inferences, bool)
            or not isinstance(requested_inferences, int)
            or requested_inferences < 1
        ):
            raise ValueError(
                f"requested_inferences must be a positive int or None, but got "
                f"{requested_inferences!r}."
            )
        if not isinstance(server_public_key, bytes | bytearray) or len(server_public_key) != 32:
            raise LicenceError(
                "server_public_key must be the licence server's raw 32-byte Ed25519 public key."
            )
        if isinstance(persist_every, bool) or not isinstance(persist_every, int):
            raise ValueError("persist_every must be an integer >= 1.")
        if persist_every < 1 or overlap_seconds < 0 or retry_seconds < 0 or clock_tolerance < 0:
            raise ValueError(
                "persist_every must be >= 1; overlap_seconds, retry_seconds and clock_tolerance "
                "must be >= 0."
            )
        self.server_url = server_url.rstrip("/")
        self.state_dir: Path = ensure_state_dir(state_dir)
        self.identity = DeviceIdentity.load_or_create(self.state_dir)
        self._server_key = Ed25519PublicKey.from_public_bytes(bytes(server_public_key))
        self.application = application
        self.customer_id = int(customer_id)
        self.models = list(models)
        self.config_sha256 = config_sha256
        self.overlap_seconds = overlap_seconds
        self.retry_seconds = retry_seconds
        self.persist_every = persist_every
        self.clock_tolerance = clock_tolerance
        self.requested_inferences = requested_inferences
        self._clock = clock
        self._http = httpx.Client(base_url=self.server_url, timeout=timeout, transport=transport)
        self._lock = threading.RLock()
        self._licence: Licence | None = None
        self._next_retry = float("-inf")
        self._available = 0  # reserved in the counter file, not used yet (current licence)
        self._closed = False
        self._last_seen = 0
        self._last_seen_saved = 0
        clock_state = read_private_json(self._clock_path)
        if isinstance(clock_state, dict) and isinstance(clock_state.get("last_seen"), int):
            self._last_seen = self._last_seen_saved = clock_state["last_seen"]

    def __repr__(self) -> str:
        return (
            f"LicenceClient({self.server_url!r}, application={self.application!r}, "
            f"device_id={self.identity.device_id!r})"
        )

    def __enter__(self) -> LicenceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ paths and state files

    @property
    def _licence_path(self) -> Path:
        return self.state_dir / f"licence_{self.application}.json"

    @property
    def _usage_path(self) -> Path:
        return self.state_dir / f"usage_{self.application}.json"

    @property
    def _clock_path(self) -> Path:
        return self.state_dir / CLOCK_FILENAME

    def _read_usage(self) -> dict[str, dict[str, int]]:
        data = read_private_json(self._usage_path)
        licences = data.get("licences") if isinstance(data, dict) else None
        if data is not None and not isinstance(licences, dict):
            raise LicenceError(
                f"{self._usage_path} is malformed; it is the inference counter and must not be "
                "edited. Restore it from a backup."
            )
        return licences or {}

    def _write_usage(self, licences: dict[str, dict[str, int]]) -> None:
        write_private(self._usage_path, protocol.canonical_bytes({"licences": licences}))

    def usage(self, licence_id: str | None = None) -> dict[str, int]:
        """``{"counter", "reported"}`` persisted for a licence (default: the current one)."""
        if licence_id is None:
            licence_id = self.ensure_licence().licence_id
        entry = self._read_usage().get(licence_id, {})
        return {"counter": entry.get("counter", 0), "reported": entry.get("reported", 0)}

    # ------------------------------------------------------------------ clock

    def _now(self) -> int:
        """The current time; raises ClockRollbackError when it is before the last time seen."""
        now = int(self._clock())
        if now < self._last_seen - self.clock_tolerance:
            raise ClockRollbackError(
                f"The system clock ({_when(now)}) is before the last time this device saw "
                f"({_when(self._last_seen)}): the clock was set back. Fix the system clock "
                "(NTP) and try again."
            )
        if now > self._last_seen:
            self._last_seen = now
            if now - self._last_seen_saved >= _LAST_SEEN_PERSIST_S:
                self._save_last_seen()
        return now

    def _save_last_seen(self) -> None:
        with state_lock(self.state_dir, "clock"):
            data = read_private_json(self._clock_path)
            stored = data.get("last_seen") if isinstance(data, dict) else None
            if isinstance(stored, int) and stored > self._last_seen:
                self._last_seen = stored
            write_private(
                self._clock_path, protocol.canonical_bytes({"last_seen": self._last_seen})
            )
            self._last_seen_saved = self._last_seen

    def _check_issued(self, licence: Licence, now: int) -> None:
        if now < licence.issued_at - self.clock_tolerance:
            raise ClockRollbackError(
                f"The system clock ({_when(now)}) is before the issue time of licence "
                f"{licence.licence_id} ({_when(licence.issued_at)}): the clock was set back. "
                "Fix the system clock (NTP) and try again."
            )

    # ------------------------------------------------------------------ licences

    def _check_licence(self, licence: Licence) -> None:
        problems = []
        if licence.device_id != self.identity.device_id:
            problems.append(f"device {licence.device_id!r}, not this device")
        if licence.application != self.application:
            problems.append(f"application {licence.application!r}, not {self.application!r}")
        if licence.customer_id != self.customer_id:
            problems.append(f"customer {licence.customer_id}, not {self.customer_id}")
        missing = [m for m in self.models if m not in licence.models]
        if missing:
            problems.append(f"no grant for model(s) {', '.join(missing)}")
        if problems:
            raise LicenceError(
                f"Licence {licence.licence_id} does not fit this runtime: {'; '.join(problems)}."
            )

    def _load_cached(self) -> Licence | None:
        try:
            document = read_private_json(self._licence_path)
            if document is None:
                return None
            licence = Licence.from_document(document, self._server_key)
            self._check_licence(licence)
        except UnsafeFileError:
            raise
        except LicenceError as e:
            log.warning("Ignoring the cached licence %s: %s", self._licence_path, e)
            return None
        return licence

    def _post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        headers = {protocol.SIGNATURE_HEADER: self.identity.sign(body)}
        try:
            response = self._http.post(
                path, content=protocol.canonical_bytes(body), headers=headers | _JSON
            )
        except httpx.HTTPError as e:
            raise _Unreachable(f"{type(e).__name__}: {e}") from None
        if response.status_code >= 500:
            raise _Unreachable(f"HTTP {response.status_code}")
        return response

    def _request(self, now: int) -> Licence:
        """Ask the server for a licence; verify and cache it. Raises _Unreachable."""
        nonce = protocol.new_nonce()
        body = {
            "device_id": self.identity.device_id,
            "customer_id": self.customer_id,
            "application": self.application,
            "models": self.models,
            "config_sha256": self.config_sha256,
            "signing_public_key": self.identity.signing_public_key_b64,
            "exchange_public_key": self.identity.exchange_public_key_b64,
            "timestamp": now,
            "nonce": nonce,
        }
        if self.requested_inferences is not None:  # leave quota for the customer's other devices
            body["requested_inferences"] = self.requested_inferences
        response = self._post("/v1/licences", body)
        if response.status_code in (403, 429):
            try:
                data = response.json()
            except ValueError:
                data = {}
            reason = data.get("reason") if isinstance(data, dict) else None
            detail = data.get("detail") if isinstance(data, dict) else None
            raise LicenceDeniedError(
                str(reason or ("rate_limited" if response.status_code == 429 else "denied")),
                str(detail or ""),
            )
        if response.status_code != 200:
            raise LicenceError(
                f"The licence server at {self.server_url} answered HTTP "
                f"{response.status_code} to a licence request: {response.text[:200]}"
            )
        try:
            document = response.json()
        except ValueError:
            raise LicenceError(
                f"The licence server at {self.server_url} answered with non-JSON content."
            ) from None
        licence = Licence.from_document(document, self._server_key)
        self._check_licence(licence)
        if licence.request_nonce != nonce:
            raise LicenceError(
                f"Licence {licence.licence_id} does not echo this request's nonce: it is a "
                "replayed or substituted answer. Check the network path to the licence server."
            )
        self._check_issued(licence, now)
        if licence.expires_at <= now:
            raise LicenceError(
                f"The licence server issued licence {licence.licence_id} already expired at "
                f"{_when(licence.expires_at)}; check the server's and this device's clocks."
            )
        try:
            write_private(self._licence_path, protocol.canonical_bytes(document))
        except LicenceError as err:  # issued and paid for: use it from memory, do not drop it
            warnings.warn(
                f"{err} Licence {licence.licence_id} is used from memory for this process only.",
                RuntimeWarning,
                stacklevel=2,
            )
        self._switch(licence)
        return licence

    def _switch(self, licence: Licence) -> None:
        old = self._licence
        if old is not None and old.licence_id != licence.licence_id:
            self._release()
        self._licence = licence
        self._available = 0

    def _renew(self, now: int) -> Licence:
        """Report usage, then request a licence. Raises _Unreachable, LicenceDeniedError."""
        self._release()
        self.report_usage()
        try:
            return self._request(now)
        except _Unreachable:
            self._next_retry = now + self.retry_seconds
            raise
        except LicenceDeniedError:
            self._next_retry = now + self.retry_seconds
            raise

    def ensure_licence(self) -> Licence:
        """A valid licence for this application: the cached one, renewed inside the overlap
        window, or a new one.

        Raises:
            ClockRollbackError: the clock is before the last time seen or the licence's issue.
            LicenceDeniedError: the server refused (``.reason`` is its code).
            LicenceUnavailableError: no valid licence and the server is unreachable.
            LicenceError: the server's answer does not verify, or the client is closed.
        """
        with self._lock:
            if self._closed:
                raise LicenceError("The licence client is closed; create a new runtime.")
            now = self._now()
            licence = self._licence
            if licence is None or now >= licence.expires_at - self.overlap_seconds:
                cached = self._load_cached()  # another process may have renewed it
                if cached is not None and (
                    licence is None or cached.expires_at > licence.expires_at
                ):
                    self._switch(cached)
                    licence = cached
            if licence is not None:
                self._check_issued(licence, now)
                if now < licence.expires_at - self.overlap_seconds:
                    return licence
                if now < licence.expires_at:  # overlap window: renew, keep it on failure
                    if now < self._next_retry:
                        return licence
                    try:
                        renewed = self._renew(now)
                    except _Unreachable as e:
                        log.warning(
                            "Licence renewal failed (server %s unreachable: %s); the current "
                            "licence stays valid until %s.",
                            self.server_url,
                            e,
                            _when(licence.expires_at),
                        )
                        return licence
                    except LicenceDeniedError as e:
                        if e.reason == "device_revoked":
                            self._drop_cache()
                            raise
                        log.warning(
                            "Licence renewal denied (%s); the current licence stays valid "
                            "until %s.",
                            e.reason,
                            _when(licence.expires_at),
                        )
                        return licence
                    if now >= renewed.expires_at - self.overlap_seconds:
                        # the renewal could not leave the window (contract end, or a licence
                        # shorter than the overlap): ask again only after retry_seconds, not on
                        # every inference
                        self._next_retry = now + self.retry_seconds
                    return renewed
            try:
                return self._renew(now)
            except _Unreachable as e:
                if licence is not None:
                    raise LicenceUnavailableError(
                        f"The licence for {self.application!r} expired at "
                        f"{_when(licence.expires_at)} and the licence server at "
                        f"{self.server_url} is unreachable ({e}). Restore the connection to "
                        "the server to renew it."
                    ) from None
                raise LicenceUnavailableError(
                    f"No licence for {self.application!r} on this device and the licence "
                    f"server at {self.server_url} is unreachable ({e}). Connect to the server "
                    "once to obtain a licence."
                ) from None

    def _drop_cache(self) -> None:
        self._release()
        self._licence = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._licence_path)

    def kek(self) -> bytes:
        """The application's key-encryption key from a valid licence (in memory only).

        Raises:
            LicenceError: the licence carries no key, or not for this device's key (and the
                errors of :meth:`ensure_licence`).
        """
        with self._lock:
            return unwrap_kek(self.ensure_licence(), self.identity.exchange_key)

    # ------------------------------------------------------------------ counting

    def _reserve(self, licence: Licence, n: int) -> bool:
        """Reserve a block covering ``n`` inferences in the counter file; False if over."""
        with state_lock(self.state_dir, f"usage_{self.application}"):
            usage = self._read_usage()
            entry = usage.setdefault(licence.licence_id, {"counter": 0, "reported": 0})
            counter = entry["counter"]
            need = n - self._available
            block = max(need, self.persist_every - self._available)
            if licence.inferences is not None:
                if counter + need > licence.inferences:
                    return False
                block = min(block, licence.inferences - counter)
            entry["counter"] = counter + block
            self._write_usage(usage)
            self._available += block
            return True

    def _release(self) -> None:
        """Give the unused reservation of the current licence back (never below reported)."""
        licence, available = self._licence, self._available
        if licence is None or available == 0:
            return
        with state_lock(self.state_dir, f"usage_{self.application}"):
            usage = self._read_usage()
            entry = usage.get(licence.licence_id)
            if entry is not None:
                entry["counter"] = max(entry["counter"] - available, entry.get("reported", 0))
                self._write_usage(usage)
            self._available = 0

    def consume(self, n: int = 1) -> None:
        """Count ``n`` inferences against the licence before they run.

        Raises:
            QuotaExhaustedError: the allowance is used up and a renewal grants no more.
            and the errors of :meth:`ensure_licence`.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an integer >= 1, but got {n!r}.")
        with self._lock:
            licence = self.ensure_licence()
            if n <= self._available:
                self._available -= n
                return
            if self._reserve(licence, n):
                self._available -= n
                return
            # the allowance is used up: one renewal may grant more
            used_up = (
                f"The {licence.inferences} inferences of licence {licence.licence_id} are used up"
            )
            now = self._now()
            if now < self._next_retry:
                raise QuotaExhaustedError(
                    f"{used_up}; the licence server granted no more at the last attempt. Next "
                    f"attempt after {_when(self._next_retry)}."
                )
            try:
                licence = self._renew(now)
            except _Unreachable as e:
                raise QuotaExhaustedError(
                    f"{used_up} and the licence server at {self.server_url} is unreachable "
                    f"({e}) to grant more."
                ) from None
            except LicenceDeniedError as e:
                raise QuotaExhaustedError(
                    f"{used_up} and the licence server grants no more ({e.reason}"
                    + (f": {e.detail}" if e.detail else "")
                    + "). Ask the licence administrator to raise the quota."
                ) from e
            if self._reserve(licence, n):
                self._available -= n
                return
            self._next_retry = now + self.retry_seconds
            raise QuotaExhaustedError(
                f"The new licence {licence.licence_id} grants {licence.inferences} inferences, "
                f"fewer than the {n} asked. Ask the licence administrator to raise the quota."
            )

    # ------------------------------------------------------------------ usage reports

    def report_usage(self) -> bool:
        """Send a signed report for every licence whose counter is ahead of the last report.

        Idempotent: the report id is ``"<licence_id>:<counter>"``, so a report whose answer was
        lost is applied once by the server when sent again. Failures are not raised (logged;
        retried at the next renewal or close). Returns True when everything is reported.
        """
        with self._lock:
            current = self._licence.licence_id if self._licence is not None else None
            with state_lock(self.state_dir, f"usage_{self.application}"):
                pending = {
                    licence_id: entry.get("counter", 0)
                    for licence_id, entry in self._read_usage().items()
                    if entry.get("counter", 0) > entry.get("reported", 0)
                }
            acknowledged: dict[str, int] = {}
            for licence_id, counter in pending.items():  # no file lock held while on the network
                body = {
                    "device_id": self.identity.device_id,
                    "licence_id": licence_id,
                    "report_id": f"{licence_id}:{counter}",
                    "counter": counter,
                    "timestamp": int(self._clock()),
                    "nonce": protocol.new_nonce(),
                }
                try:
                    response = self._post("/v1/usage", body)
                except _Unreachable as e:
                    log.warning("Usage report for licence %s failed: %s", licence_id, e)
                    continue
                if 200 <= response.status_code < 300:
                    acknowledged[licence_id] = counter
                else:
                    log.warning(
                        "Usage report for licence %s refused: HTTP %s %s",
                        licence_id,
                        response.status_code,
                        response.text[:200],
                    )
            try:
                return self._record_reported(acknowledged, current)
            except LicenceError as e:  # reported, but not recorded: sent again next time
                log.warning("Usage reports sent but not recorded: %s", e)
                return False

    def _record_reported(self, acknowledged: dict[str, int], current: str | None) -> bool:
        """Note the acknowledged counters and drop finished licences; True when all reported."""
        with self._lock, state_lock(self.state_dir, f"usage_{self.application}"):
            usage = self._read_usage()
            for licence_id, counter in acknowledged.items():
                if licence_id in usage:
                    entry = usage[licence_id]
                    entry["reported"] = max(entry.get("reported", 0), counter)
            done = [
                licence_id
                for licence_id, entry in usage.items()
                if licence_id != current and entry.get("counter", 0) <= entry.get("reported", 0)
            ]
            for licence_id in done:
                del usage[licence_id]
            if acknowledged or done:
                self._write_usage(usage)
            return all(e.get("counter", 0) <= e.get("reported", 0) for e in usage.values())

    def flush(self) -> None:
        """Give back the unused reservation and persist the last time seen."""
        with self._lock:
            self._release()
            self._save_last_seen()

    def close(self) -> None:
        """Flush the counter, report usage (best effort) and close the connection. Idempotent."""
        with self._lock:
            if self._closed:
                return
            try:
                try:
                    self.flush()
                finally:  # a counter that cannot be saved is still reported to the server
                    self.report_usage()
            finally:
                self._closed = True
                self._http.close()


_JSON = {"Content-Type": "application/json"}
