"""The runtime's licence client: get, verify, cache and renew licences; count inferences.

The wire format is :mod:`skruntime.licensing.protocol`. This is the only skruntime module that
imports ``httpx`` (the ``runtime`` extra installs it); it is imported only when a runtime is given
a licence server.

State files, in the runtime's state folder (see :mod:`.identity`), all owner-only (0600):

``licence_<application>.json``
    the last signed licence document of the server, verified again (signature, device,
    application, customer) every time it is read. A licence just issued is not written over a
    newer one, valid and issued later, that another process cached meanwhile
    (:meth:`LicenceClient._cache`). A renewal issued ahead of this device's clock (behind the
    server's by more than ``clock_tolerance``) is written with the licence it replaces, still
    valid, beside it (``"previous"``, its signed document): a process started before the clock
    reaches the renewal uses that one meanwhile, while its clock is within the server's
    timestamp window of the renewal's issue time (:meth:`LicenceClient._previous`).
``usage_<application>.json``
    ``{"licences": {"<licence_id>": {"counter": int, "reported": int, "expires_at": int,
    "inferences": int}}}``: inferences counted under each licence, the counter last acknowledged
    by the server, and the licence's expiry and allowance (absent in files of older runtimes, and
    ``inferences`` for licences without an allowance). An entry is kept, reported or not, while its
    licence could still be used: it is dropped once fully reported and either expired or used up
    (never the entry of the cached licence, nor of the dropping process's own); of the reported
    entries of replaced licences still valid, 64 are kept (the file's size bound): those of
    partly used licences first, since the server may send such a licence again to a process
    whose request it answered, the answer lost, which would count it from 0
    (:func:`_partly_used`), then the latest of the others. A process never counts a licence
    again from 0: a licence it has counted whose entry is gone is used up for it (it takes the
    cached licence, or renews). A malformed file is refused (:class:`LicenceError` naming it);
    it is never reset silently.
``server_keys.json``
    ``{"checked": {"<server URL>": "<base64 public key>"}}``: the key each server presented at
    ``GET /v1/public-key`` when it matched a pinned one. Before its first licence request to a
    server not noted here with a pinned key, the client asks the server for its key and refuses
    a mismatch (:class:`LicenceError` showing both keys) without sending a licence request: a
    wrongly pinned key would otherwise be found only in the signed answer, after the server
    registered the device and drew the licence's allowance from the customer's quota, at every
    retry. This guards against misconfiguration only (anyone in the path can answer the GET):
    every licence is still verified with a pinned key, and a licence answer that does not
    verify drops the server's entry, so its key is asked again before the next request. A
    malformed file only holds checks: it is warned about and checked afresh, never refused.
    ``"signs"`` (absent while empty), of the same form: the servers whose answer to a device
    request (a licence, a receipt, a denial, a ``keep``) verified with a pinned key
    (:meth:`LicenceClient._signed_answer`); an unsigned ``422`` about ``renews`` from one of
    them is a failed request, not a server older than ``renews``
    (:meth:`LicenceClient._field_unknown`). Other entries (a newer runtime's) are kept when the
    file is rewritten. A runtime older than ``"signs"`` rewrites the file without it (when it
    checks a server's key, or drops a check): a process that saw the server sign still knows,
    and the next signed answer notes it again, but until then a process started afresh takes an
    unsigned ``422`` about ``renews`` as the server's.
``pending_<application>.json``
    the last licence request sent whose answer did not come back (a timeout, a dropped
    connection, a 5xx), unsigned (its signature is made again, the same bytes: Ed25519 is
    deterministic). The server may have granted it, and answers the very request sent again
    with that licence, uncharged, but charges a new request again: so the next licence request
    sends this one again, by this process or another of the device (restarted, say), while its
    timestamp is inside the server's window by this device's clock and it asks what the
    runtime asks now (else a new one is signed, and written here before it is sent, naming
    this one and those it superseded in ``supersedes``: the server answers it with the licence
    it granted one of them, or answered one of them with, uncharged, while that licence is
    valid and not reported used up: another process of the device received it then). Removed
    once the server answered it (a signed answer other than ``rate_limited``, or a licence that
    verified); a file that is not such a request is ignored, with a warning, and replaced.
``clock.json``
    ``{"last_seen": int}``: the latest time this device has seen, for clock-rollback detection;
    it advances with the time the boot-time clock measures also while the clock stands behind
    it (saved, then, a second ahead at most every second), so that a clock set back within the
    tolerance again and again gains at most the tolerance (:meth:`LicenceClient._now`).
    Behind the clock, also ``"writer"`` (the process that wrote it) and, from a closing
    process, ``"last_seen_us"`` (the microseconds it reached beyond ``last_seen``; older
    releases read ``last_seen`` alone): :meth:`LicenceClient._save_last_seen`.
    A clock before it (beyond ``clock_tolerance``) is refused unless the licence server confirms
    it: its signed receipt of a usage report stamped with the local time shows, free of charge,
    that the server agrees (it refuses a timestamp off its window as ``stale_request`` first);
    without a licence to report on (or a server that cannot answer so), a licence it issues for a
    request stamped with the local time (fresh: it echoes the request's nonce) does, for the
    allowance it draws: one process at a time asks so (the renewal lock below), and one that
    waited takes the licence another cached meanwhile if it was issued within
    ``clock_tolerance`` of its clock (:meth:`LicenceClient._licence_confirming`). Then
    ``last_seen`` is reset to that time; a process that saw a later time than its clock shows
    never writes it over a lower ``last_seen`` (it would undo such a reset), but refuses that
    clock itself until the server confirms it. A clock that was set back gets
    ``stale_request`` instead and stays refused. A malformed file is refused.

Timeline. A licence is used as is until ``expires_at - overlap_seconds``. Inside the overlap
window each :meth:`LicenceClient.ensure_licence` tries to renew (at most once per
``retry_seconds`` after a failure; after a request whose answer was lost, once
:data:`_RESEND_BY_S` after it, to send it again: ``pending_<application>.json``); the server
starts the new licence at the request time. Every
renewal draws a new allowance from the customer's quota, so a licence no longer than
``overlap_seconds`` is renewed from its half-life instead. A renewal for validity names the
licence it renews (``renews``): when a new licence would expire at the same time (the contract
end), the server answers a signed ``keep`` and charges nothing; the licence (or one a renewal
could not extend, like the licence it replaced) is noted in the cache file, unsigned, as
``"at_contract_end": true`` with ``"checked_at"``, the time of that answer, and checked again
every ``contract_end_check_seconds`` (a day) until it expires, so that a contract extended or
ended early, or a device revoked, in that time takes effect within a day. A server that does
not know ``renews`` (its ``422``; an unsigned one only from a server never seen signing) gets
a plain renewal instead, charged, unless the licence is noted at the contract end already: that
one is kept and noted as checked, so that the daily checks never draw an allowance. Any failed
renewal inside the window (server unreachable or answering 5xx, an answer that is not a
verified licence for this request, or a denial other than ``device_revoked`` and
``contract_ended``, which drop it) keeps the cached licence until it expires, with a warning
naming the cause; after expiry an unreachable server, or its 5xx answer (its detail quoted),
raises :class:`LicenceUnavailableError` and a bad answer the :class:`LicenceError` that
describes it, raised again without a new licence request until
``retry_seconds`` pass (:meth:`LicenceClient._refuse_held`: the request may have drawn an
allowance). An answer is read to at most :data:`MAX_ANSWER_BYTES`, within ``timeout`` after
its headers, the whole exchange within :data:`_EXCHANGE_TIMEOUTS` timeouts; a redirect (any
``3xx``) is a bad answer naming the URL to give instead, or the ``Location`` that is not one
(:meth:`LicenceClient._fetch`).
A denial is a ``403``/``429`` with the protocol's ``{"decision": "deny", "reason"}`` body signed
by a pinned key for this request (:func:`.protocol.answer_message`); any other answer (a
proxy's or captive portal's page, a denial that is not signed) is a bad answer. Usage reports
are likewise acknowledged or dropped only on a signed answer (:meth:`LicenceClient.report_usage`).

Counting (one :meth:`LicenceClient.consume` per inference). The persisted counter is a
*reservation*: before granting an inference that is not covered yet, the client adds a block of
``persist_every`` inferences (capped at the licence's allowance) to the counter file, under a
file lock, and only then grants. Inferences are then granted from memory until the block is used.
:meth:`LicenceClient.close` gives the unused part of the block back. Trade-off: a crash or kill
counts up to ``persist_every - 1`` inferences that never ran, but the counter never counts fewer
than were run, and the file is written once per ``persist_every`` inferences instead of once per
inference. Several processes sharing one state folder each reserve their own blocks from the same
file, so together they never exceed the allowance; a block given back never lowers the counter
below what the server has already been told (reports are monotonic). When a licence's
allowance is used up, a process first takes the licence that another process renewed to, and
renews only if there is none. One process at a time renews (``.renew_<application>.lock``),
so that the others take its licence from the cache instead of drawing an allowance each: a
licence due (in its window, expired or missing; :meth:`LicenceClient._renew_due`), or used up
(:meth:`LicenceClient.consume`: the renewing process counts on the new licence before it lets
the lock go, so that one waiting finds what is left of it, and renews only if nothing is), or
needed to confirm a clock set back (:meth:`LicenceClient._confirm_clock`).
``persist_every=1`` writes the exact count before every inference.
"""

from __future__ import annotations

import contextlib
import logging
import math
import numbers
import os
import re
import socket
import ssl
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..config import NAME_RE
from ..errors import (
    DENIAL_ADVICE,
    ClockRollbackError,
    LicenceDeniedError,
    LicenceError,
    LicenceUnavailableError,
    QuotaExhaustedError,
)
from . import protocol
from .holders import Holder, running, sweep
from .identity import (
    DeviceIdentity,
    MalformedStateError,
    UnsafeFileError,
    ensure_state_dir,
    read_private_json,
    state_lock,
    write_private,
)
from .licence import Licence, unwrap_kek
from .server_keys import CHECKED, ServerKeyNotes

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
_RESEND_BY_S = protocol.TIMESTAMP_WINDOW_S // 2
"""After a licence request whose answer was lost, the next attempt comes no later than this
long after its timestamp (not ``retry_seconds`` later), while the server still answers its
resend with the licence it may have granted (:meth:`LicenceClient._retry_after`)."""
_SUPERSEDED_KEPT = 8
"""The most earlier unanswered licence requests a new one names as ``supersedes`` (the first
and the latest: the server takes 16): one every ``_RESEND_BY_S`` or so through a long outage.
The server answers a request naming one it answered with a licence granted to an earlier one
with that licence too (naming that request as its ``request_nonce``), so the latest ones keep
a licence granted in the middle of the chain."""
_NONCE = re.compile(r"[0-9a-f]{32}")
_MAX_IDLE_ENTRIES = 64
"""Reported entries of replaced, still valid licences kept in the usage file (its size bound):
those of unused licences are dropped first, the oldest first, then of partly used ones
(:func:`_partly_used`)."""
_USAGE_HOLDS = "the inference counters of this device's licences"
_CLOCK_HOLDS = "the last time this device saw, for clock-rollback detection"
_LAST_SEEN_PERSIST_S = 60
_MAX_TIME = 253_402_300_799  # 9999-12-31 23:59:59 UTC: a later time in a state file is corrupt
_MAX_REQUESTED = 2**63 - 1
"""The largest allowance a licence request may ask for (the server's 64-bit integers)."""
_AT_CONTRACT_END = "at_contract_end"
"""Cache-file note (unsigned: it only delays renewals) on a licence a renewal could not extend."""
_RENEWALS_PER_CONSUME = 4
"""Renewals one :meth:`LicenceClient.consume` tries while runtimes sharing its state folder
reserve each new licence's whole allowance first (licences smaller than ``persist_every``)."""
_CHECKED_AT = "checked_at"
"""Cache-file note on such a licence: when the server last said so (absent: its issue time)."""
_PREVIOUS = "previous"
"""Cache-file entry beside a renewal issued ahead of this device's clock: the signed document
of the licence it replaces, still valid, which processes started before the clock reaches the
renewal use meanwhile (:meth:`LicenceClient._previous`)."""
DEFAULT_CONTRACT_END_CHECK_S = 24 * 3600
"""How often a licence a renewal could not extend is checked with the server (free)."""
_ENDS_LICENCE = ("device_revoked", "contract_ended")
"""Denials of a renewal that end the licence in use at once: the server no longer licenses the
device, or the customer's contract ended before the licence's expiry (ended early)."""


MAX_ANSWER_BYTES = 1 << 20
"""Bytes of an answer the client reads: a licence echoes its request's models (a request has
at most :data:`~.protocol.MAX_DEVICE_BODY` bytes), and the cache holds at most this much. A
larger answer (a proxy's download, a faulty server) is refused once this much has arrived,
never held in memory whole."""
_IDENTITY = {"Accept-Encoding": "identity"}
"""Answers are small: asked uncompressed, so that no compressed answer is unpacked at once."""


_HTTP_MODULES = ("httpx", "httpcore")
"""Whose errors wrap the one a failed connection raised (an ssl.SSLError in the handshake)."""
_CLOSED_IN_HANDSHAKE = (ssl.SSLEOFError, ssl.SSLZeroReturnError)
"""The connection closed in the TLS handshake: a server that hung up (overloaded, restarting
behind a proxy), unreachable as one that reset it, and not a TLS set-up to fix."""
_ANSWER_LOST = (
    httpx.ReadTimeout,
    httpx.WriteTimeout,
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
    httpx.DecodingError,
)
"""Failures after which the request may have reached the server (unlike a refused connection)."""


def _at_contract_end(licence: Licence) -> bool:
    """Whether the cache notes ``licence`` as one a renewal could not extend."""
    return licence.document.get(_AT_CONTRACT_END) is True


def _checked_at(licence: Licence) -> int:
    """When the server last said that a renewal could not extend ``licence`` (its issue time
    unless the cache notes a later check)."""
    checked = licence.document.get(_CHECKED_AT)
    return max(checked, licence.issued_at) if _is_count(checked) else licence.issued_at


def _when(ts: float) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))
    except (OverflowError, OSError, ValueError):  # out of the platform's calendar
        return f"Unix time {ts}"


def _is_count(value: object) -> bool:
    """A non-negative JSON integer (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _describe(entry: dict[str, int], licence: Licence) -> None:
    """Note in a counter entry until when, and up to what, its licence may be used."""
    entry["expires_at"] = licence.expires_at
    if licence.inferences is not None:
        entry["inferences"] = licence.inferences


_TOKEN = re.compile(r"[0-9a-f]{16}")
"""A runtime's token in the counter file's notes (:class:`.holders.Holder`): it names a file
of the state folder, so nothing else is taken (``../`` or a FIFO)."""


def _used(entry: dict[str, Any]) -> int:
    """The inferences of a counter entry that count as run: all it reserved but what runtimes
    still running hold (:mod:`.holders`)."""
    return entry["counter"] - sum(entry.get("held", {}).values())


def _note_held(entry: dict[str, Any], token: str, available: int) -> None:
    """Note in a counter entry that the runtime of ``token`` holds ``available`` of its
    reservation (none: its note goes)."""
    held = entry.setdefault("held", {})
    if available:
        held[token] = available
    else:
        held.pop(token, None)
    if not held:
        del entry["held"]


def _partly_used(entry: dict[str, int]) -> bool:
    """Whether the counter entry of a licence still valid and not used up (not
    :meth:`LicenceClient._finished`) counts inferences against an allowance: the server may
    send that licence again (to a process whose request it answered, the answer lost), and
    without the entry that process would count it again from 0, past its allowance."""
    return "inferences" in entry and entry["counter"] > 0


def _checked_url(url: str) -> str:
    """``url`` without a trailing slash; a :class:`LicenceError` unless it is an http(s) URL with
    a host (found here, not at the first request deep inside a renewal)."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as e:
        reason = str(e)
    else:
        if parsed.scheme in ("http", "https") and parsed.host:
            return url.rstrip("/")
        reason = "not an http:// or https:// URL with a host"
    raise LicenceError(
        f"The licence server URL {url!r} is invalid ({reason}). Give the server's base URL, "
        "e.g. https://licence.example:8765."
    )


@dataclass(frozen=True)
class _Unsigned:
    """An answer to a usage report that no pinned server key signed for it (``answer``
    describes it): it neither acknowledges nor refuses the report."""

    answer: str


class _Redirect(Exception):
    """A redirect (any 3xx) in answer to a request, stopped as it arrived
    (:func:`_stop_at_redirect`)."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


_EXCHANGE_TIMEOUTS = 4
"""A request's whole exchange (connect, send, headers, body) is bounded to this many
``timeout``s: ``httpx`` bounds each read, so a server (or a proxy) sending its headers a byte
at a time within the timeout kept the runtime waiting for hours (:class:`_Watchdog`)."""


class _Watchdog:
    """Shuts down the connection of one request once its time is up (``seconds`` from now):
    a read that waits is woken and fails, where ``httpx`` bounds each read only. The
    connection is the one ``httpcore`` reports opening through the request's ``trace``
    extension (the licence client keeps no connection alive, so each request opens one)."""

    def __init__(self, seconds: float) -> None:
        self._deadline = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._timer: threading.Timer | None = None
        self.fired = False

    def trace(self, event: str, info: dict[str, Any]) -> None:
        """``httpcore``'s trace callback: watch the connection once it is open (to the server
        or a proxy: ``connection.``, or ``socks.`` through a SOCKS proxy)."""
        if event not in ("connection.connect_tcp.complete", "socks.connect_tcp.complete"):
            return
        stream = info.get("return_value")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if not isinstance(sock, socket.socket):
            return
        with self._lock:
            if self._fd is not None:
                return
            self._fd = os.dup(sock.fileno())  # the socket stays, also once TLS wraps it
            self._timer = threading.Timer(max(self._deadline - time.monotonic(), 0), self._fire)
            self._timer.daemon = True
            self._timer.start()

    def _fire(self) -> None:
        with self._lock:
            if self._fd is None:
                return
            self.fired = True
            with contextlib.suppress(OSError), socket.socket(fileno=self._fd) as sock:
                self._fd = None
                sock.shutdown(socket.SHUT_RDWR)

    def cancel(self) -> None:
        """The request is over: stop watching."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def _stop_at_redirect(response: httpx.Response) -> None:
    """The licence server's connection's response hook: stop at a redirect before ``httpx``
    reads its ``Location`` to build the request it would follow, which raised
    :class:`httpx.RemoteProtocolError` for a ``Location`` that is not a URL, taken for a lost
    answer (resent, then "unreachable") instead of a redirect."""
    if response.is_redirect:
        raise _Redirect(response)


@dataclass(frozen=True)
class _Answer:
    """The server's ``response`` to the licence request ``body``; ``signed``: its JSON object
    when signed by a pinned key for that request, else None (the one check of that
    signature: :meth:`LicenceClient._post_licence_request`)."""

    body: dict[str, Any]
    response: httpx.Response
    signed: dict[str, Any] | None


class _RenewalFailed(Exception):
    """No licence decision came back from the server (the message says why)."""


class _Unreachable(_RenewalFailed):
    """The server could not be reached or answered with a server error; ``sent``: whether the
    request may have reached it (False: every send was refused, a connection error);
    ``answered``: a server error (5xx, :func:`_server_error`) was the last answer."""

    def __init__(self, message: str, *, sent: bool = True, answered: bool = False) -> None:
        super().__init__(message)
        self.sent = sent
        self.answered = answered


_SERVER_ERROR_ADVICE = (
    "Its answer says what is wrong (the server's log says more): try again later, or ask the "
    "server's administrator to fix it."
)


def _server_error(response: httpx.Response) -> str:
    """A 5xx answer in a few words: its status and the ``detail`` sklicense gives (what to do:
    retry later, or what its administrator must fix, such as a full database disk), else the
    start of its body (a proxy's page)."""
    try:
        data = response.json()
    except (ValueError, RecursionError):
        data = None
    detail = data.get("detail") if isinstance(data, dict) else None
    said = " ".join((detail if isinstance(detail, str) else response.text).split())[:300]
    return f"HTTP {response.status_code} {said!r}" if said else f"HTTP {response.status_code}"


class _BadAnswer(_RenewalFailed):
    """The server answered, but not with a verified licence for this request, nor a denial.

    ``error`` is what is raised when there is no valid licence to fall back on; ``held``:
    whether it is raised again until ``retry_seconds`` pass (False: no request reached the
    server, a TLS handshake that failed, so there is no allowance to spare).
    """

    def __init__(self, error: LicenceError, *, held: bool = True) -> None:
        super().__init__(str(error))
        self.error = error
        self.held = held


def _checked_configuration(
    configuration: Mapping[str, Any] | None,
    application: str,
    customer_id: int,
    models: list[str],
) -> dict[str, Any] | None:
    """The signed configuration to send, refused here if the server would refuse it anyway:
    not the application's or customer's it claims, or too large for a device request."""
    if configuration is None:
        return None
    payload = configuration.get("payload") if isinstance(configuration, Mapping) else None
    signature = configuration.get("signature") if isinstance(configuration, Mapping) else None
    customer = payload.get("customer") if isinstance(payload, dict) else None
    if not isinstance(signature, str) or not isinstance(customer, dict):
        raise LicenceError(
            "configuration must be the configuration file's {'payload', 'signature'} of a "
            "platform version 2 configuration (it names the customer)."
        )
    if payload.get("application") != application or customer.get("id") != customer_id:
        raise LicenceError(
            f"The configuration names application {payload.get('application')!r} and customer "
            f"{customer.get('id')!r}, not {application!r} and {customer_id!r}: it changed since "
            "the runtime loaded it. Create the runtime again."
        )
    document = {"payload": payload, "signature": signature}
    # the request's other fields (ids, keys, nonce, hashes) take under 1 KiB besides these
    size = len(protocol.canonical_bytes({"configuration": document, "models": models}))
    if size > protocol.MAX_DEVICE_BODY - 2048:
        raise LicenceError(
            f"The configuration's signed payload and model names take {size} bytes; a licence "
            f"request may carry {protocol.MAX_DEVICE_BODY - 2048}. Split the application's "
            "models over several applications."
        )
    return document


#: Said when a usage report is not acknowledged: the counter is kept, nothing is lost.
_RESENT = "It is sent again at the next licence renewal or close()."
#: Why an answer may not be signed by a pinned server key, and what to do.
_NOT_SIGNED = (
    "An sklicense server older than this runtime does not sign its answers: upgrade it. "
    "Otherwise something in the network path answered instead of the server (a proxy, a "
    "captive portal, a man in the middle): check the server URL and the network path."
)
#: Why a usage report that the server refuses for good is dropped, per reason.
_DROPPED = {
    "unknown_licence": "{server} does not know that licence, and the {unreported} counted under "
    "it since its last acknowledged report are not reported",
    "counter_behind": "{server} already holds a higher counter for that licence than the "
    "{counted} counted here, as when the state folder was restored from a backup",
}


def _acknowledges(response: httpx.Response, data: dict[str, Any], body: dict[str, Any]) -> bool:
    """Whether ``data``, the server's signed answer to the usage report ``body``, is its
    receipt."""
    return (
        200 <= response.status_code < 300
        and data.get("accepted") is True
        and data.get("report_id") == body["report_id"]
    )


def _nonces(value: object) -> list[str] | None:
    """``value`` when it is a list of request nonces (of a ``pending_<application>.json``),
    else None."""
    if isinstance(value, list) and all(isinstance(n, str) and _NONCE.fullmatch(n) for n in value):
        return value
    return None


def _inferences(count: int) -> str:
    """``count`` with its noun, singular or plural, for messages."""
    return f"{count} inference" + ("" if count == 1 else "s")


MAX_PINNED_KEYS = 8
"""The most server keys a runtime pins at once (the current one and the next, usually)."""


def _pinned_server_keys(keys: object) -> tuple[bytes, ...]:
    """The pinned server keys, each checked: one raw 32-byte key, or a list or tuple of 1 to
    :data:`MAX_PINNED_KEYS` (during a rotation of the server's signing key, the current key and
    the next), duplicates dropped. A key that is not 32 raw bytes is refused, saying what was
    given: the usual mistake is the base64 text that ``sklicense init`` prints."""
    if isinstance(keys, set | frozenset | dict | Iterator | memoryview):
        raise LicenceError(  # a set has no order to report in, a generator is read once
            "server_public_key must be one raw 32-byte key (bytes) or a list or tuple of them, "
            f"but got a {type(keys).__name__}: pass list(...) of the keys."
        )
    listed = isinstance(keys, list | tuple)
    given = list(keys) if listed else [keys]
    if not 1 <= len(given) <= MAX_PINNED_KEYS:
        raise LicenceError(
            f"server_public_key must be one key or a list of 1 to {MAX_PINNED_KEYS} keys (the "
            f"server's current key and the next, during a rotation), but got {len(given)}."
        )
    for index, key in enumerate(given):
        if isinstance(key, bytes | bytearray) and len(key) == 32:
            continue
        got = (
            f"{type(key).__name__} of length {len(key)}"
            if isinstance(key, str | bytes | bytearray)
            else type(key).__name__
        )
        where = f"server_public_key[{index}]" if listed else "server_public_key"
        raise LicenceError(
            f"{where} must be the licence server's raw 32-byte Ed25519 public key, but got "
            f"{got}: decode the base64 text that `sklicense init` prints first, e.g. "
            "base64.b64decode(text)."
        )
    return tuple(dict.fromkeys(bytes(key) for key in given))


def _proxy_variables() -> str:
    """The proxy environment variables set (which ``httpx`` reads), for an error message."""
    names = [n for n in os.environ if n.upper() in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")]
    return ", ".join(sorted(names)) or "the proxy environment variables (HTTPS_PROXY, ALL_PROXY)"


def _elapsed_clock() -> Callable[[], float]:
    """The system's clock of the time elapsed, which nobody sets back: ``CLOCK_BOOTTIME``
    where there is one (Linux), which counts a system suspend, else ``time.monotonic``.
    ``CLOCK_MONOTONIC`` (``time.monotonic`` on Linux) stands still while the system is
    suspended: a process kept running across suspends, the clock set back after each resume,
    ran an expired licence for as long as the suspends lasted (only the time awake counted)."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    if boottime is None:
        return time.monotonic
    clock_gettime = time.clock_gettime
    return lambda: clock_gettime(boottime)


_CLIENTS: weakref.WeakSet[LicenceClient] = weakref.WeakSet()


def _forked() -> None:
    """In a forked child: the reservations in memory are the parent's (it runs them, and gives
    back what it has left at close); a child that ran them too ran them twice, past the
    allowance. The child reserves its own (:meth:`LicenceClient._take`)."""
    for client in list(_CLIENTS):
        client._available = 0


if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=_forked)


class LicenceClient:
    """The licence client of one application on this device.

    Args:
        server_url: base URL of the ``sklicense`` server, e.g. ``https://licence.example``.
        state_dir: the runtime's state folder (None: ``$SKRUNTIME_STATE_DIR`` or
            ``~/.local/state/skruntime``).
        server_public_key: the server's raw 32-byte Ed25519 public key (pinned), or a list of
            up to 8 such keys, any of which the server may sign with: pin the current key and
            the next before the server's signing key is rotated (docs/licensing.md).
        application, customer_id, models, config_sha256: what the licence is requested for
            (from the signed configuration).
        configuration: the configuration file's ``{"payload", "signature"}`` as the protector
            wrote them, sent with every licence request: a server that knows the application's
            public key licenses this device only as the customer it names (None: not sent,
            for servers that take the customer id on trust).
        overlap_seconds: renew this long before expiry (default 30 days).
        timeout: seconds per HTTP request.
        clock: returns the current Unix time (tests).
        monotonic: returns the seconds elapsed, never set back (tests; default: the system's
            boot-time clock, suspends included, with the default ``clock``, none with another
            one).
        transport: an ``httpx`` transport (for tests and custom networking).
        retry_seconds: after a failed renewal, wait this long before trying again.
        persist_every: inferences reserved per counter-file write (see the module docs).
        clock_tolerance: seconds the clock may step back before :class:`ClockRollbackError`.
        contract_end_check_seconds: how often a licence that a renewal cannot extend (it ends
            at the contract end) is checked with the server, which charges nothing for it: a
            contract extended or ended early, or a device revoked, since takes effect then
            (default a day).
    """

    resend_delays: tuple[float, ...] = (0.5, 2.0)
    """Seconds before each resend of a licence request whose answer was lost (well inside the
    server's ±300 s window)."""

    def __init__(
        self,
        server_url: str,
        *,
        state_dir: str | os.PathLike[str] | None = None,
        server_public_key: bytes | Sequence[bytes],
        application: str,
        customer_id: int,
        models: Sequence[str],
        config_sha256: str,
        configuration: Mapping[str, Any] | None = None,
        overlap_seconds: float = DEFAULT_OVERLAP_S,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] | None = None,
        transport: httpx.BaseTransport | None = None,
        retry_seconds: float = DEFAULT_RETRY_S,
        persist_every: int = DEFAULT_PERSIST_EVERY,
        clock_tolerance: float = DEFAULT_CLOCK_TOLERANCE_S,
        requested_inferences: int | None = DEFAULT_REQUESTED_INFERENCES,
        contract_end_check_seconds: float = DEFAULT_CONTRACT_END_CHECK_S,
    ) -> None:
        if requested_inferences is not None and (
            isinstance(requested_inferences, bool)
            or not isinstance(requested_inferences, int)
            or not 1 <= requested_inferences <= _MAX_REQUESTED
        ):  # a larger one is refused by the server (422) at every licence request
            raise ValueError(
                f"requested_inferences must be an int from 1 to {_MAX_REQUESTED} or None, but "
                f"got {requested_inferences!r}."
            )
        if not isinstance(application, str) or not NAME_RE.fullmatch(application):
            raise ValueError(  # it names the state files: "a/b" failed as a full disk would
                "application must be the configuration's application name, 1-128 letters, "
                "digits, '_', '.' or '-' (not starting with '.' or '-'), which names this "
                f"application's files in the state folder, but got {application!r}."
            )
        pinned = _pinned_server_keys(server_public_key)
        if isinstance(persist_every, bool) or not isinstance(persist_every, int):
            raise ValueError(f"persist_every must be an integer >= 1, but got {persist_every!r}.")
        if persist_every < 1:
            raise ValueError(f"persist_every must be >= 1, but got {persist_every}.")
        for name, seconds in (
            ("overlap_seconds", overlap_seconds),
            ("retry_seconds", retry_seconds),
            ("clock_tolerance", clock_tolerance),
            ("timeout", timeout),
            ("contract_end_check_seconds", contract_end_check_seconds),
        ):
            if (
                isinstance(seconds, bool)
                or not isinstance(seconds, numbers.Real)
                or not math.isfinite(seconds)
                or seconds < 0
                or (name == "timeout" and seconds == 0)
            ):
                least = "> 0" if name == "timeout" else ">= 0"
                raise ValueError(
                    f"{name} must be a finite number of seconds {least}, not {seconds!r}."
                )
        self.server_url = _checked_url(server_url)
        self.state_dir: Path = ensure_state_dir(state_dir)
        self.identity = DeviceIdentity.load_or_create(self.state_dir)
        self._pinned_raw = pinned
        self._pinned = tuple(Ed25519PublicKey.from_public_bytes(key) for key in pinned)
        self._server_keys = ServerKeyNotes(self.state_dir, self.server_url, pinned)
        self.application = application
        self.customer_id = int(customer_id)
        self.models = list(models)
        self.config_sha256 = config_sha256
        self.configuration = _checked_configuration(
            configuration, application, customer_id, self.models
        )
        self.overlap_seconds = overlap_seconds
        self.retry_seconds = retry_seconds
        self.persist_every = persist_every
        self.clock_tolerance = clock_tolerance
        self.requested_inferences = requested_inferences
        self.contract_end_check_seconds = contract_end_check_seconds
        self._clock = clock
        #: Time elapsed, which nobody sets back: the system's monotonic clock with the system
        #: clock (else only when given, with an injected clock: tests).
        self._monotonic = (
            monotonic if monotonic is not None else _elapsed_clock() if clock is time.time else None
        )
        self._timeout = timeout
        try:
            self._http = httpx.Client(
                base_url=self.server_url,
                timeout=timeout,
                transport=transport,
                event_hooks={"response": [_stop_at_redirect]},
            )
        except (ImportError, ValueError, httpx.InvalidURL) as e:  # a proxy httpx cannot use
            raise LicenceError(
                f"The proxy for the licence server at {self.server_url} cannot be used ({e}): "
                f"fix or unset {_proxy_variables()}, or pass transport=."
            ) from None
        self._lock = threading.RLock()
        self._licence: Licence | None = None
        self._next_retry = float("-inf")
        #: The licence request sent last whose answer did not come back (see the module docs).
        self._pending: dict[str, Any] | None = None
        #: The nonce of this process's last licence request when it never reached the server
        #: (each send refused): a request superseding it need not name it (:meth:`_superseded`).
        self._never_sent: str | None = None
        #: With no valid licence: until when the last answer, unusable, is raised again instead
        #: of asking (it may have drawn an allowance, as each new request would).
        self._bad_answer: tuple[float, LicenceError] | None = None
        self._next_clock_check = float("-inf")
        #: When a licence that carries no KEK may next be asked for again (:meth:`_with_kek`).
        self._next_kek_request = float("-inf")
        self._available = 0  # reserved in the counter file, not used yet (current licence)
        #: The licence just issued that the cache file could not take (a full state folder),
        #: with the licence to cache beside it: cached once the folder takes writes again.
        self._uncached: tuple[Licence, Licence | None] | None = None
        self._counted: set[str] = set()  # licences this process has a counter entry for
        self._closed = False
        self._seen_signing = False  # this server signed an answer to this process
        #: Names this process's writes of ``clock.json`` (``writer``): it gives its reserved
        #: second back only while no other process wrote the file since (:meth:`_save_last_seen`).
        self._writer = os.urandom(8).hex()
        #: This runtime's lock file while it holds reserved inferences (:mod:`.holders`).
        self._holder = Holder(self.state_dir)
        _CLIENTS.add(self)
        #: The time ``clock.json`` held, exactly, before this process's writes since another
        #: process's: what no reservation of another process exceeds.
        self._written_over = 0.0
        last_seen, exact, _ = self._read_clock()
        self._last_seen = self._last_seen_saved = last_seen
        #: (a time this process saw, the monotonic clock then): :meth:`_elapsed_floor`
        self._anchor: tuple[float, float] = (0.0, 0.0)
        self._anchor_at(exact)
        #: The time this process last saved for itself in ``clock.json`` (a second ahead while
        #: the clock is behind: :meth:`_now`).
        self._reserved = self._last_seen
        self._started = False  # :meth:`_now` called

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
    def _pending_path(self) -> Path:
        return self.state_dir / f"pending_{self.application}.json"

    @property
    def _clock_path(self) -> Path:
        return self.state_dir / CLOCK_FILENAME

    def _malformed(self, path: Path, problem: str, holds: str) -> LicenceError:
        return LicenceError(
            f"{path} is malformed ({problem}); it holds {holds} and must not be edited. Restore "
            'it from a backup, or remove it to start afresh (docs/licensing.md, "Clock rollback '
            'and the state folder").'
        )

    def _read_usage(self) -> dict[str, dict[str, int]]:
        """The counter entries, checked: a malformed file is refused, never reset silently."""
        try:
            data = read_private_json(self._usage_path)
        except MalformedStateError as e:
            raise self._malformed(self._usage_path, e.problem, _USAGE_HOLDS) from None
        if data is None:
            return {}
        licences = data.get("licences") if isinstance(data, dict) else None
        if not isinstance(licences, dict):
            raise self._malformed(self._usage_path, "no licences object", _USAGE_HOLDS)
        for licence_id, entry in licences.items():
            if not isinstance(entry, dict) or not all(
                _is_count(entry.get(k, 0)) for k in ("counter", "reported", "expires_at")
            ):
                raise self._malformed(
                    self._usage_path,
                    f"the entry of licence {licence_id[:40]!r} is not counts",
                    _USAGE_HOLDS,
                )
            held = entry.get("held", {})
            if not isinstance(held, dict) or not all(
                isinstance(k, str) and _TOKEN.fullmatch(k) and _is_count(v) for k, v in held.items()
            ):
                raise self._malformed(
                    self._usage_path,
                    f"the reservations of licence {licence_id[:40]!r} are not counts",
                    _USAGE_HOLDS,
                )
            if "inferences" in entry and not _is_count(entry["inferences"]):
                raise self._malformed(
                    self._usage_path,
                    f"the allowance of licence {licence_id[:40]!r} is not a count",
                    _USAGE_HOLDS,
                )
            entry.setdefault("counter", 0)
            entry.setdefault("reported", 0)
        return licences

    def _write_usage(self, licences: dict[str, dict[str, int]]) -> None:
        write_private(self._usage_path, protocol.canonical_bytes({"licences": licences}))

    def usage(self, licence_id: str | None = None) -> dict[str, int]:
        """``{"counter", "reported"}`` persisted for a licence (default: the current one)."""
        if licence_id is None:
            licence_id = self.ensure_licence().licence_id
        entry = self._read_usage().get(licence_id, {})
        return {"counter": entry.get("counter", 0), "reported": entry.get("reported", 0)}

    def _cached_licence_id(self) -> str | None:
        """The id in the licence cache file (unverified: only compared), or None."""
        try:
            document = read_private_json(self._licence_path)
        except LicenceError:
            return None
        body = document.get("licence") if isinstance(document, dict) else None
        licence_id = body.get("licence_id") if isinstance(body, dict) else None
        return licence_id if isinstance(licence_id, str) else None

    # ------------------------------------------------------------------ clock

    def _now(self) -> int:
        """The current time; raises ClockRollbackError when it is before the last time seen.

        The last time seen advances with the time elapsed (the monotonic clock, which nobody
        sets back) also while the clock is behind it: a clock set back by less than
        ``clock_tolerance`` again and again (just before a licence expires), or held still,
        no longer stops the licence's time. While behind, the last time seen is saved a second
        ahead at most every second, so that a process killed and started again with the clock
        set back does not gain that second again and again. The time elapsed counts from what
        this process saw itself (its start, the clock): a later time another process saved
        (its own second reserved ahead) bounds the clock, but is not advanced further, else
        processes sharing the state folder behind the clock pushed the time seen ahead a
        second per process every second, until each was refused."""
        # the monotonic clock read before the clock: with the clock right, the time this
        # process saw (:meth:`_elapsed`) is never ahead of it
        elapsed = self._monotonic() if self._monotonic is not None else None
        clock = self._clock()
        now = int(clock)
        # the time elapsed since counts, also while the clock stood behind the time seen
        exact = self._elapsed(elapsed)
        own = int(exact)
        self._last_seen = max(self._last_seen, own)
        if now < self._last_seen - self.clock_tolerance:
            raise ClockRollbackError(
                f"The system clock ({_when(now)}) is before the last time this device saw "
                f"({_when(self._last_seen)}, counting the time elapsed since): the clock was "
                "set back. Fix the system clock (NTP) and try again."
            )
        # a process's first call saves the clock when it is past the time saved, and makes a
        # reservation when it is not: else processes killed in turn, the clock held still,
        # each ran on the same time saved, for ever
        first, self._started = not self._started and self._monotonic is not None, True
        if (
            clock >= exact
            and now >= self._last_seen
            and not (first and now <= self._last_seen_saved)
        ):
            if now - self._last_seen_saved >= _LAST_SEEN_PERSIST_S:
                self._save_last_seen(now)  # noted once saved: a failed save is tried again
            elif first:
                with contextlib.suppress(LicenceError):  # tried again within the minute
                    self._save_last_seen(now)
                self._last_seen = max(self._last_seen, now)
            else:
                self._last_seen = now
            self._anchor_at(max(clock, exact))  # never back: the file's exact time included
        elif own >= self._reserved:  # behind: this process reached the second it reserved
            # (also within the second: a clock held still, an inference every 0.1 s, once
            # took the clock again at each call, and the licence's time stood still)
            self._save_last_seen(reserve=1)
        return now

    def _anchor_at(self, seen: float) -> None:
        """Count the time elapsed from now on from ``seen``, a time this process saw itself
        (:meth:`_elapsed_floor`)."""
        self._anchor = (seen, self._monotonic() if self._monotonic is not None else 0.0)

    def _elapsed(self, monotonic: float | None = None) -> float:
        """The time this process saw last (:meth:`_anchor_at`), advanced by the time the
        monotonic clock measured since (``monotonic``: its reading, else read now; without a
        monotonic clock, that time)."""
        seen, at = self._anchor
        if self._monotonic is None:
            return seen
        return seen + max((self._monotonic() if monotonic is None else monotonic) - at, 0.0)

    def _elapsed_floor(self, *, partial: bool = False) -> int:
        """:meth:`_elapsed` in whole seconds (``partial``: with the second begun, when that is
        ahead of the clock)."""
        floor = self._elapsed()
        return math.ceil(floor) if partial and floor > self._clock() else int(floor)

    def _read_last_seen(self) -> int:
        """``last_seen`` of ``clock.json`` (0 when there is none); a malformed file is refused,
        never taken as 0, which would turn the rollback check off."""
        return self._read_clock()[0]

    def _read_clock(self) -> tuple[int, float, str | None]:
        """``clock.json``: ``last_seen``, the time exactly (``last_seen_us``, the microseconds
        a closing process saved beyond it; 0 when absent or not such a count: ``last_seen``
        alone is the bound, as older releases read it) and ``writer``, the process that wrote
        it last (None when absent)."""
        try:
            data = read_private_json(self._clock_path)
        except MalformedStateError as e:
            raise self._malformed(self._clock_path, e.problem, _CLOCK_HOLDS) from None
        if data is None:
            return 0, 0.0, None
        last_seen = data.get("last_seen") if isinstance(data, dict) else None
        if not _is_count(last_seen) or last_seen > _MAX_TIME:
            raise self._malformed(
                self._clock_path, "last_seen is not a time in Unix seconds", _CLOCK_HOLDS
            )
        us = data.get("last_seen_us", 0)
        writer = data.get("writer")
        return (
            last_seen,
            last_seen + (us / 1e6 if _is_count(us) and us < 1_000_000 else 0.0),
            writer if isinstance(writer, str) else None,
        )

    def _save_last_seen(self, now: int = 0, reserve: int = 0, *, closing: bool = False) -> None:
        """Persist the latest time seen (``now`` included), never lowering the file's, plus
        ``reserve`` seconds (a clock behind it: :meth:`_now`). A time this process saw later
        than the clock shows now by more than ``clock_tolerance`` is not written: the file
        holds less only once another process reset it, when the server confirmed the clock
        (which had jumped forward), and this one would undo that for every later process (this
        process still refuses a clock before it). ``now`` counts as seen only once written: noted
        before, a save that failed (a full disk) was not tried again, and every other call
        in that second ran (``clock.json`` not saved for over a minute refuses them all).
        ``closing`` (:meth:`flush`): the time elapsed since the last call counts, the second
        begun included while the clock is behind it (else processes closed within a second,
        the clock held, never moved the time seen), and a reserved second this process wrote
        and did not reach is given back while the file still holds it (else a device whose
        clock NTP stepped back would see the time seen move further ahead of its clock at each
        start, and be refused after 300 of them)."""
        with state_lock(self.state_dir, "clock"):
            saved, saved_exact, writer = self._read_clock()
            if writer != self._writer:  # another process wrote since: its reservation stays
                self._written_over = saved_exact
            # what this process saw itself: a later time another process saved is kept, not
            # reserved ahead of again (processes behind the clock each added their second
            # to the others', a second per process every second)
            own = max(self._elapsed_floor(partial=closing), now)
            exact = max(self._elapsed(), now)
            document: dict[str, Any] = {}
            clock = int(self._clock())
            behind = self._clock() < exact <= clock + self.clock_tolerance
            if reserve or (closing and behind):  # behind the clock: see below
                document["writer"] = self._writer
            if closing and behind:
                # the time this process reached, exactly: with whole seconds only, each process
                # started behind the clock counted at least a second (the second begun, else
                # processes closed within a second, the clock held, never moved the time
                # seen), and processes started faster than one a second pushed the time seen
                # ahead of a clock NTP stepped back until they were refused
                target = max(saved_exact, exact)
                back = max(exact, self._written_over)
                if writer == self._writer and saved == self._last_seen_saved and back < target:
                    # its own reservation, unused, given back: no other process wrote since,
                    # so none holds a reservation beyond what the file held before
                    target = back
                seen = int(target)
                us = math.ceil((target - seen) * 1e6)
                if us >= 1_000_000:
                    seen, us = seen + 1, 0
                if us:
                    document["last_seen_us"] = us
                latest = max(self._last_seen, seen)
            else:
                latest = max(self._last_seen, saved, own)
                seen = max(
                    saved,
                    own + reserve if own <= clock + self.clock_tolerance else min(own, clock),
                )
            document["last_seen"] = seen
            write_private(self._clock_path, protocol.canonical_bytes(document))
            self._last_seen, self._last_seen_saved = latest, seen
            self._reserved = own + reserve

    def _reset_last_seen(self, now: int) -> None:
        """Set the last time seen to ``now``, also lower: only once the server confirmed it."""
        with state_lock(self.state_dir, "clock"):
            write_private(self._clock_path, protocol.canonical_bytes({"last_seen": now}))
            self._last_seen = self._last_seen_saved = self._reserved = now
            self._anchor_at(now)

    def _ahead(self, licence: Licence, now: int) -> bool:
        """Whether ``licence`` is issued after ``now`` by more than ``clock_tolerance``."""
        return now < licence.issued_at - self.clock_tolerance

    def _defer_to(self, licence: Licence) -> None:
        """Renew no more until ``licence``, cached and issued ahead of this clock, can be
        taken (:meth:`_ahead`): a valid licence stays in use meanwhile (the current one, or
        the one cached beside ``licence``: :meth:`_previous`), where taking ``licence`` raised
        :class:`ClockRollbackError` at every call, and renewing again drew another allowance
        from the quota."""
        self._next_retry = max(self._next_retry, licence.issued_at - self.clock_tolerance)

    def _previous(self, cached: Licence, now: int) -> Licence | None:
        """The licence cached beside ``cached``, a renewal issued ahead of ``now``, that it
        replaces (:data:`_PREVIOUS`), when it may be used until this clock reaches ``cached``:
        it verifies and fits this runtime, is valid at ``now``, and ``now`` is no further
        behind ``cached``'s issue time than the server's timestamp window, as the clock that
        asked for ``cached`` was (a clock further behind was set back since: it gets
        :class:`ClockRollbackError` naming ``cached``)."""
        document = cached.document.get(_PREVIOUS)
        if document is None or now < cached.issued_at - protocol.TIMESTAMP_WINDOW_S:
            return None
        try:
            previous = Licence.from_document(document, self._pinned)
            self._check_licence(previous)
        except LicenceError as e:
            log.warning(
                "Ignoring the licence cached beside licence %s in %s: %s",
                cached.licence_id,
                self._licence_path,
                e,
            )
            return None
        return None if self._ahead(previous, now) or now >= previous.expires_at else previous

    def _check_issued(self, licence: Licence, now: int) -> None:
        if self._ahead(licence, now):
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
            licence = Licence.from_document(document, self._pinned)
            self._check_licence(licence)
        except UnsafeFileError:
            raise
        except LicenceError as e:
            log.warning("Ignoring the cached licence %s: %s", self._licence_path, e)
            return None
        return licence

    def _post(
        self, path: str, body: dict[str, Any], *, resend: bool = False
    ) -> tuple[httpx.Response, bool]:
        """POST the signed ``body``; returns the answer and whether it answers a resend. With
        ``resend``, an answer lost after the request may have reached the server (a read
        timeout, a dropped connection, a 5xx) is asked for again with the identical signed
        bytes, after each of :attr:`resend_delays`: the server answers a granted request's
        resend with the same licence, without charging the quota again."""
        content = protocol.canonical_bytes(body)
        headers = {protocol.SIGNATURE_HEADER: self.identity.sign(body)} | _JSON
        delays = iter(self.resend_delays if resend else ())
        resent = False
        while True:
            answered = False
            try:
                response = self._fetch("POST", path, content=content, headers=headers)
            except _ANSWER_LOST as e:
                failure = f"{type(e).__name__}: {e}"
            except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError) as e:
                failure = f"{type(e).__name__}: {e}"
                raise _Unreachable(failure, sent=resent) from None  # not sent, or no use
            else:
                if response.status_code < 500:
                    return response, resent
                failure, answered = _server_error(response), True
            delay = next(delays, None)
            if delay is None:
                raise _Unreachable(failure, answered=answered)
            log.warning("Licence server: %s; sending the same request again", failure)
            time.sleep(delay)
            resent = True

    def _fetch(self, method: str, path: str, **options: Any) -> httpx.Response:
        """The server's answer to ``method`` ``path``, read whole: at most
        :data:`MAX_ANSWER_BYTES`, arriving within the ``timeout`` after its headers, so that an
        answer no server of this protocol gives (a proxy's download, a body sent a byte at a
        time) costs neither the device's memory, nor its time (``httpx``'s timeout bounds each
        read, not the whole), nor a confusing error.

        Raises:
            httpx.HTTPError: the request's, and :class:`httpx.ReadTimeout` for a body still
                arriving ``timeout`` seconds after its headers (an answer lost: resent).
            _BadAnswer: the answer is a redirect (not followed: the server URL is to be
                changed), or larger than :data:`MAX_ANSWER_BYTES`; or the TLS handshake
                failed (:meth:`_tls_failure`).
        """
        # closed after the answer: a transport= given keeps connections alive whatever the
        # client's limits, and a request on a kept one opens none for the watchdog to watch
        options["headers"] = options.get("headers", {}) | _IDENTITY | {"Connection": "close"}
        seconds = _EXCHANGE_TIMEOUTS * self._timeout
        watchdog = _Watchdog(seconds)
        options["extensions"] = {"trace": watchdog.trace}
        try:
            with self._http.stream(method, path, **options) as response:
                content = self._read_bounded(method, path, response)
        except _Redirect as e:
            raise _BadAnswer(self._redirected(method, path, e.response)) from None
        except httpx.TransportError as e:
            if watchdog.fired:  # the connection shut down: its time was up
                late = (
                    httpx.ConnectTimeout if isinstance(e, httpx.ConnectError) else httpx.ReadTimeout
                )
                raise late(
                    f"the answer to {method} {path} was not whole {seconds:g} s after the "
                    f"request began ({_EXCHANGE_TIMEOUTS} times the timeout): it arrives too "
                    "slowly",
                    request=e.request,
                ) from None
            if not isinstance(e, httpx.ConnectError):
                raise
            failure = self._tls_failure(e)
            if failure is None:
                raise
            raise _BadAnswer(failure, held=False) from None
        finally:
            watchdog.cancel()
        headers = [  # the content is decoded and whole now
            (name, value)
            for name, value in response.headers.multi_items()
            if name.lower() not in ("content-encoding", "content-length", "transfer-encoding")
        ]
        return httpx.Response(
            response.status_code,
            headers=headers,
            content=content,
            request=response.request,
        )

    def _tls_failure(self, error: httpx.ConnectError) -> LicenceError | None:
        """The error of a TLS handshake that failed (``error`` caused by an
        :class:`ssl.SSLError`), or None for another connection error: the server was reached,
        so it was said to be "unreachable", with the advice to connect to it, where the URL
        (``https://`` to a plain-HTTP server) or the trust in its certificate is to be fixed.
        No request was sent."""
        cause: BaseException | None = error
        while cause is not None and type(cause).__module__.split(".")[0] in _HTTP_MODULES:
            cause = cause.__cause__ or cause.__context__
        # the error httpcore mapped, not one being handled when it was raised (a refused
        # connection asked for while the caller handled an SSLError of its own)
        if not isinstance(cause, ssl.SSLError) or isinstance(cause, _CLOSED_IN_HANDSHAKE):
            return None
        where = f"The TLS handshake with the licence server at {self.server_url} failed ({cause})"
        if isinstance(cause, ssl.SSLCertVerificationError):
            advice = (
                "its certificate is not trusted by this device: give this device the "
                "certificate of the authority that signed it (SSL_CERT_FILE or SSL_CERT_DIR), "
                "or serve a certificate this device's authorities trust"
            )
        elif "WRONG_VERSION_NUMBER" in str(cause) or "RECORD_LAYER_FAILURE" in str(cause):
            advice = (
                "the server there does not speak TLS: give its http:// URL if it serves plain "
                "HTTP (sklicense serve does, unless a TLS proxy is in front of it)"
            )
        else:
            advice = "check the URL and the TLS set-up of the server or of a proxy in front of it"
        return LicenceError(f"{where}: {advice}. No licence request was sent.")

    def _read_bounded(self, method: str, path: str, response: httpx.Response) -> bytes:
        """The body of ``response``, the answer to ``method`` ``path``, within the bounds of
        :meth:`_fetch` (which raises what this raises)."""
        deadline = time.monotonic() + self._timeout
        content = bytearray()
        for chunk in response.iter_bytes():
            content += chunk
            if time.monotonic() > deadline:
                raise httpx.ReadTimeout(
                    f"the answer to {method} {path} was not whole {self._timeout} s after "
                    f"its headers ({len(content)} bytes had arrived)",
                    request=response.request,
                )
            if len(content) > MAX_ANSWER_BYTES:
                raise _BadAnswer(
                    LicenceError(
                        f"The licence server at {self.server_url} answered {method} {path} "
                        f"with HTTP {response.status_code} "
                        f"({response.headers.get('Content-Type', 'no Content-Type')}) of "
                        f"more than {MAX_ANSWER_BYTES} bytes, more than any answer of an "
                        "sklicense server; the rest was not read. Check the server URL: a "
                        "proxy or a captive portal may be in the way, or it is not an "
                        "sklicense server."
                    )
                )
        return bytes(content)

    def _redirected(self, method: str, path: str, response: httpx.Response) -> LicenceError:
        """The error of a redirect (any 3xx) in answer to ``method`` ``path``, naming the
        server URL to give instead, or, with no ``Location`` that is a URL, what it names: a
        signed licence request is sent to the configured server only (and a redirected POST
        may be resent as a GET, or lose its body)."""
        location = response.headers.get("Location")
        target, unusable = None, "without a Location header"
        if location is not None:
            try:
                target = response.url.join(location)
            except httpx.InvalidURL as e:
                unusable = f"to {location[:200]!r}, which is not a URL ({e})"
        if target is None:
            return LicenceError(
                f"The licence server at {self.server_url} redirects {method} {path} (HTTP "
                f"{response.status_code}) {unusable}; the runtime follows no redirect of the "
                "licence server. Give the licence server's own URL as the server URL, or check "
                "the network path: a proxy or a captive portal may be in the way."
            )
        base = str(target.copy_with(query=None, fragment=None))
        base = base[: -len(path)] if base.endswith(path) else base
        return LicenceError(
            f"The licence server at {self.server_url} redirects {method} {path} to {target} "
            f"(HTTP {response.status_code}); the runtime follows no redirect of the licence "
            f"server. Give the server URL that the redirect names instead (probably {base!r}), "
            "or check the network path: a proxy or a captive portal may be in the way."
        )

    def _signed_answer(
        self, path: str, body: dict[str, Any], response: httpx.Response
    ) -> dict[str, Any] | None:
        """The JSON object the server answered to the request ``body`` at ``path`` when its
        ``X-SK-Signature`` verifies with a pinned key for this very request
        (:func:`~.protocol.answer_message`), else None: an answer nobody can fake or replay."""
        signature = response.headers.get(protocol.SIGNATURE_HEADER)
        try:
            data = response.json()
        except (ValueError, RecursionError):
            return None
        if not isinstance(data, dict) or signature is None:
            return None
        message = protocol.answer_message(
            path, response.status_code, protocol.canonical_bytes(body), data
        )
        signer = next(
            (
                raw
                for raw, key in zip(self._pinned_raw, self._pinned, strict=True)
                if protocol.verify(message, signature, key)
            ),
            None,
        )
        if signer is None:
            return None
        self._note_signed(signer)
        return data

    @staticmethod
    def _denial(signed: dict[str, Any] | None) -> LicenceDeniedError | None:
        """The server's denial in its answer ``signed`` (:meth:`_signed_answer`) to a licence
        request; None when it is not one, or not signed for the request (a proxy's page, or a
        denial no pinned key signed)."""
        if signed is not None and signed.get("decision") == "deny":
            reason, detail = signed.get("reason"), signed.get("detail")
            if isinstance(reason, str) and reason:
                return LicenceDeniedError(reason, detail if isinstance(detail, str) else "")
        return None

    def _request(
        self, now: int, renews: Licence | None = None, also: Sequence[str] = ()
    ) -> Licence:
        """Check the server's key (:meth:`_check_server_key`), then ask the server for a
        licence; verify and cache it. ``renews``: the current licence, named in the request;
        returned (noted as checked) when the server answers that a new one would not better it,
        or, noted at the contract end already, when the server does not know ``renews``.
        ``also``: request nonces the request ``supersedes`` besides those of lost answers (the
        current licence's, to have it answered again: :meth:`_with_kek`); the current licence
        answered again stays current, its counter and reservation kept.

        Raises:
            _Unreachable: no answer, or a server error.
            _BadAnswer: the server presents none of the pinned keys, or an answer that
                is neither a verified licence for this request, its ``keep`` nor a denial.
            LicenceDeniedError: the server's denial.
            ClockRollbackError: ``now`` is before the issue time of the licence (cached).
        """
        self._check_server_key()
        answer = self._ask(now, renews, also)
        if renews is not None and self._field_unknown(answer, "renews"):
            self._answered(answer.body)  # refused for its field, unsigned by a server that old
            if _at_contract_end(renews):  # a plain renewal would charge an allowance daily
                log.warning(
                    "The licence server at %s does not know the renews field (it is older than "
                    "this runtime), so it cannot check licence %s at the contract end for free: "
                    "the licence is kept until it expires, and a contract extended or a device "
                    "revoked since is seen only then. Upgrade the server.",
                    self.server_url,
                    renews.licence_id,
                )
                return self._keep(renews, answer.body)
            log.warning(
                "The licence server at %s does not know the renews field (it is older than "
                "this runtime): the licence is renewed, drawing an allowance from the quota, "
                "and one at the contract end is then kept until it expires. Upgrade the server.",
                self.server_url,
            )
            renews = None
            answer = self._ask(now, renews, also)
        try:
            kept = None if renews is None else self._kept(answer, renews)
            licence = kept if kept is not None else self._verified_answer(answer, now)
        except LicenceError as e:
            self._server_keys.note(CHECKED, None)  # its key is asked again before the next
            raise _BadAnswer(e) from None
        self._answered(answer.body)  # also by a server older than the signed answers
        if kept is not None:
            return self._keep(kept, answer.body)
        previous = self._licence
        if previous is not None and licence.licence_id == previous.licence_id:  # answered again
            notes = {
                k: previous.document[k]
                for k in (_AT_CONTRACT_END, _CHECKED_AT)
                if k in previous.document
            }
            licence = replace(licence, document=licence.document | notes)
            # only over itself: the cache may hold a renewal since (one issued ahead of this
            # clock, this licence beside it), which written over would be lost, paid for
            self._cache(licence, only_over=licence.licence_id)
            self._licence = licence  # its counter and reservation stay
            return licence
        if (  # issued later than the licence it replaces, yet no longer: the contract end
            previous is not None
            and licence.expires_at == previous.expires_at
            and (licence.issued_at > previous.issued_at or _at_contract_end(previous))
        ):
            licence = replace(licence, document=licence.document | {_AT_CONTRACT_END: True})
        # cached even so: the server drew its allowance, and this clock, behind the server's by
        # more than clock_tolerance (narrower than the server's window), takes it once it
        # reaches its issue time, rather than ask, and be charged, at every call; the licence
        # it replaces, still valid, is cached beside it for the processes started meanwhile
        meanwhile = (
            previous
            if previous is not None and now < previous.expires_at and self._ahead(licence, now)
            else None
        )
        self._cache(licence, beside=meanwhile)
        if meanwhile is not None:
            log.warning(
                "Licence %s is issued at %s, ahead of this device's clock (%s) by more than "
                "clock_tolerance: licence %s stays in use until this clock reaches it. Check "
                "the system clock (NTP).",
                licence.licence_id,
                _when(licence.issued_at),
                _when(now),
                meanwhile.licence_id,
            )
            self._defer_to(licence)
            return meanwhile
        self._switch(licence, fresh=True)
        self._check_issued(licence, now)
        return licence

    def _kept(self, answer: _Answer, renews: Licence) -> Licence | None:
        """``renews`` when the server answered the licence request with its signed ``keep`` (a
        new licence would not better it); None for any other answer.

        Raises:
            LicenceError: a signed ``keep`` of another licence or expiry.
        """
        data = answer.signed if answer.response.status_code == 200 else None
        if data is None or data.get("decision") != protocol.KEEP_DECISION:
            return None
        if (data.get("licence_id"), data.get("expires_at")) != (
            renews.licence_id,
            renews.expires_at,
        ):
            raise LicenceError(
                f"The licence server at {self.server_url} answered that licence "
                f"{data.get('licence_id')!r} expiring at {data.get('expires_at')!r} stays valid, "
                f"but the request renews licence {renews.licence_id} expiring at "
                f"{renews.expires_at}: the server is faulty. Upgrade it or report the problem."
            )
        return renews

    def _keep(self, licence: Licence, body: dict[str, Any]) -> Licence:
        """Go on with ``licence`` (the current one), noted as at the contract end and checked
        at the time of the licence request ``body``, in memory and in the cache."""
        notes = {_AT_CONTRACT_END: True, _CHECKED_AT: body["timestamp"]}
        kept = replace(licence, document=licence.document | notes)
        self._cache(kept, only_over=kept.licence_id)
        self._licence = kept  # the same licence: its counter and reservation stay
        return kept

    def _field_unknown(self, answer: _Answer, name: str) -> bool:
        """Whether the server refused the licence request ``answer`` answers for fields it
        does not know alone (a 422 of extra fields), its field ``name`` (``renews``,
        ``supersedes``) among them: a server older than this runtime. Taken unsigned too
        (servers before the signed answers sign nothing), unless this server was seen signing
        its answers (noted in ``server_keys.json``): then an unsigned one came from the network
        path, and taking it would delay a contract-end check by ``contract_end_check_seconds``
        or charge a renewal; it is a failed request instead, retried after ``retry_seconds``."""
        if answer.response.status_code != 422:
            return False
        if answer.signed is None and (self._seen_signing or self._server_keys.signs()):
            return False
        try:
            data = answer.response.json()
        except (ValueError, RecursionError):
            return False
        errors = data.get("detail") if isinstance(data, dict) else None
        return (
            isinstance(errors, list)
            and all(isinstance(e, dict) and e.get("type") == "extra_forbidden" for e in errors)
            and any(e.get("loc") == [name] for e in errors)
        )

    def _cache(
        self,
        licence: Licence,
        *,
        only_over: str | None = None,
        beside: Licence | None = None,
        warn: bool = True,
    ) -> None:
        """Write ``licence`` to the cache file, unless the cache holds a newer one
        (:meth:`_newer_cached`), which another process renewed to while this one renewed too
        (after waiting past the renewal lock's bound): written over it, the older licence would
        be the one every process starting afterwards takes. The process goes on with its own
        licence either way. With ``only_over`` (a licence checked, not issued), written only
        while the cache holds the licence of that id. ``beside``: the licence that ``licence``,
        issued ahead of this clock, replaces, written with it (:data:`_PREVIOUS`). A licence
        that cannot be written is used from memory by this process, with a warning (unless not
        ``warn``), and cached once the folder takes writes again (:meth:`_cache_again`)."""
        if only_over is None:
            self._uncached = None
        try:
            with state_lock(self.state_dir, f"licence_{self.application}"):
                if only_over is not None and self._cached_licence_id() != only_over:
                    return
                newer = self._newer_cached(licence) if only_over is None else None
                if newer is not None:
                    log.info(
                        "Licence %s is not cached: the cache holds licence %s, issued later by "
                        "another process of this device; this process goes on with its own.",
                        licence.licence_id,
                        newer.licence_id,
                    )
                    return
                document = licence.document
                if beside is not None:  # its own previous licence, if any, is of no more use
                    previous = {k: v for k, v in beside.document.items() if k != _PREVIOUS}
                    document = document | {_PREVIOUS: previous}
                write_private(self._licence_path, protocol.canonical_bytes(document))
        except LicenceError as err:  # the file, or its lock file (no inode left), not written
            if only_over is not None:
                log.warning(
                    "%s The check of licence %s is not noted: the other processes of this "
                    "device check it again.",
                    err,
                    licence.licence_id,
                )
                return
            # issued and paid for: use it from memory, do not drop it
            self._uncached = (licence, beside)
            if warn:
                warnings.warn(
                    f"{err} Licence {licence.licence_id} is used from memory by this process, "
                    "and cached once the folder takes writes again.",
                    RuntimeWarning,
                    stacklevel=3,
                )

    def _cache_again(self) -> None:
        """Cache the licence the cache file could not take when it was issued (:meth:`_cache`),
        now that the state folder took a write: else every process started later takes the
        older licence cached before it (used up, or none), and asks, and pays, for another.
        Still failing, it stays in memory without another warning."""
        uncached = self._uncached
        if uncached is None:
            return
        licence, beside = uncached
        self._cache(licence, beside=beside, warn=False)

    def _newer_cached(self, licence: Licence) -> Licence | None:
        """The cached licence when it is newer than ``licence``, just issued: another one,
        valid now, issued later (:meth:`_other_cached`), else None. Issued later is newer even
        when it expires no later (the contract end) or earlier (a contract shortened); a cached
        licence that does not verify with a pinned key or does not fit this runtime (another
        server key, another device key) is none. Nor is a cache file that group or others may
        access: the licence just issued, paid for, replaces it with an owner-only file."""
        try:
            cached = self._other_cached(licence, self._load_cached())
        except UnsafeFileError:
            return None
        return cached if cached is not None and cached.issued_at > licence.issued_at else None

    # ------------------------------------------------------------------ the server's key

    def _check_server_key(self) -> None:
        """Refuse a server that presents none of the pinned keys, before any licence request:
        its licences would not verify, yet each request would register the device and draw an
        allowance from the customer's quota. Asked once per server URL and key it presents
        (noted in ``server_keys.json`` while that key is pinned); a guard against
        misconfiguration, not a security check (the licence's signature is).

        Raises:
            _Unreachable: no answer, or a server error.
            _BadAnswer: the answer is not a public key, or not a pinned one.
        """
        if self._server_keys.checked():
            return
        presented = self._presented_key()
        if presented not in self._pinned_raw:
            pins = ", ".join(protocol.b64(key) for key in self._pinned_raw)
            raise _BadAnswer(
                LicenceError(
                    f"The licence server at {self.server_url} presents the public key "
                    f"{protocol.b64(presented)} (GET /v1/public-key), but this runtime pins "
                    f"{pins} (server_public_key): its licences would not verify. No licence "
                    "was requested, so nothing was drawn from the customer's quota. Pin the "
                    "key that `sklicense init` printed for this server, or check that the URL "
                    "is the right licence server."
                )
            )
        self._server_keys.note(CHECKED, presented)

    def _presented_key(self) -> bytes:
        """The raw public key the server presents at ``GET /v1/public-key``.

        Raises:
            _Unreachable: no answer, or a server error.
            _BadAnswer: any other answer than a 32-byte key in base64.
        """
        try:
            response = self._fetch("GET", "/v1/public-key")
        except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError) as e:
            raise _Unreachable(f"{type(e).__name__}: {e}") from None
        if response.status_code >= 500:
            raise _Unreachable(_server_error(response), answered=True)
        try:
            data = response.json() if response.status_code == 200 else None
        except (ValueError, RecursionError):
            data = None
        encoded = data.get("public_key") if isinstance(data, dict) else None
        try:
            key = protocol.unb64(encoded) if isinstance(encoded, str) else b""
        except ValueError:  # not base64, or not ASCII
            key = b""
        if len(key) != 32:
            raise _BadAnswer(
                LicenceError(
                    f"The licence server at {self.server_url} answered GET /v1/public-key with "
                    f"HTTP {response.status_code} {response.text[:200]!r}, not its public key. "
                    "Check the server URL: a proxy or a captive portal may be in the way, or it "
                    "is not an sklicense server."
                )
            )
        return key

    def _note_signed(self, key: bytes) -> None:
        """Note that this server signs its answers with ``key``, a pinned one, so that an
        unsigned answer about ``renews`` is not taken as the server's (:meth:`_field_unknown`):
        in this process, and in ``server_keys.json`` for the others, again whenever the note is
        gone from it or names another key (:meth:`.ServerKeyNotes.follow_signer`)."""
        self._seen_signing = True
        self._server_keys.follow_signer(key)

    def _ask(self, now: int, renews: Licence | None, also: Sequence[str] = ()) -> _Answer:
        """Send a licence request stamped ``now`` (naming the licence it ``renews``, if any),
        or the one whose answer was lost before, again (:meth:`_unanswered`); returns it with
        the answer (:class:`_Answer`), unless that is a denial (raised). The server answers the
        resend of a granted request with its licence, uncharged; of a denied one with
        ``replayed_request``, and of one no longer inside its window with ``stale_request``:
        then a fresh request is sent once, to learn the reason of a lost denial.

        Raises:
            _Unreachable: no answer, or a server error.
            LicenceDeniedError: the server's denial.
        """
        # the request another process left unanswered is taken only while none is sending one
        # (it may be that process's, on its way)
        with state_lock(self.state_dir, f"sending_{self.application}", wait_seconds=0) as alone:
            return self._ask_sending(now, renews, others=alone, also=also)

    def _ask_sending(
        self, now: int, renews: Licence | None, *, others: bool, also: Sequence[str] = ()
    ) -> _Answer:
        """:meth:`_ask`, ``others``: whether the request in ``pending_<application>.json`` may
        be sent again though another process wrote it (:meth:`_unanswered`). A new request
        names the unanswered ones it replaces (:meth:`_superseded`), and ``also``."""
        held = self._held(others=others)
        superseded = [] if held is None else self._superseded(held)
        superseded = [*also, *(n for n in superseded if n not in also)]
        for fresh in (False, True):
            body = None if fresh else self._unanswered(now, renews, held)
            sent_before = body is not None
            if body is None:
                body = self._licence_body(now, renews)
                if superseded:
                    body["supersedes"] = superseded
                self._hold_unanswered(body)
            answer, resent = self._send_noting(body, sent_before=sent_before, also=also)
            response, signed = answer.response, answer.signed
            if signed is not None and response.status_code != 429:  # decided
                self._answered(body)
            denial = self._denial(signed) if response.status_code in (403, 429) else None
            if denial is None:
                return answer
            if (
                fresh
                or not (resent or sent_before)
                or denial.reason not in ("replayed_request", "stale_request")
            ):
                raise denial
            superseded = [  # out of the server's window, maybe granted; ``also`` still named
                *also,
                *(n for n in self._superseded(body) if n not in also),
            ]
            log.warning("Licence server: the lost answer was a denial; asking again for it")
        raise AssertionError("unreachable")

    def _send_noting(
        self, body: dict[str, Any], *, sent_before: bool, also: Sequence[str] = ()
    ) -> tuple[_Answer, bool]:
        """:meth:`_send_licence_request`, noting in :attr:`_never_sent` whether the request
        never reached the server: every send refused, now and before (``sent_before``: it was
        sent by an earlier attempt)."""
        nonce, refused = body["nonce"], False
        try:
            return self._send_licence_request(body, also)
        except _Unreachable as e:
            refused = not e.sent
            raise
        finally:
            if refused and not sent_before:
                self._never_sent = nonce
            elif not refused and self._never_sent == nonce:
                self._never_sent = None

    def _send_licence_request(
        self, body: dict[str, Any], also: Sequence[str] = ()
    ) -> tuple[_Answer, bool]:
        """:meth:`_post` the licence request ``body`` (held); a server older than
        ``supersedes`` (its ``422``, :meth:`_field_unknown`) gets it again without that field,
        held in its place: charged again if that server granted one it supersedes. Not when
        it names one of ``also`` (:meth:`_with_kek`): without the field it would only draw a new
        allowance, at every attempt.

        Raises:
            _BadAnswer: such a server refused a request naming one of ``also`` (not held: it
                decided nothing).
        """
        answer, resent = self._post_licence_request(body)
        if "supersedes" not in body or not self._field_unknown(answer, "supersedes"):
            return answer, resent
        if set(also) & set(body["supersedes"]):
            self._answered(body)  # refused before deciding: nothing to send again
            raise _BadAnswer(
                LicenceError(
                    f"The licence server at {self.server_url} does not know the supersedes "
                    "field (it is older than this runtime), so it cannot answer the licence "
                    "again with the key-encryption key it has now; asked without the field, it "
                    "would issue a new licence, drawing an allowance from the quota. Upgrade "
                    "the server (the licence gets the key when it is renewed)."
                ),
                held=False,
            )
        log.warning(
            "The licence server at %s does not know the supersedes field (it is older than this "
            "runtime): a licence granted to a request whose answer was lost is charged again. "
            "Upgrade the server.",
            self.server_url,
        )
        del body["supersedes"]  # never sent as it is: the server refused it before deciding
        self._hold_unanswered(body)
        return self._post_licence_request(body)

    def _post_licence_request(self, body: dict[str, Any]) -> tuple[_Answer, bool]:
        """:meth:`_post` the licence request ``body``: its answer, its signature checked once,
        for all that reads it, and whether it answers a resend."""
        response, resent = self._post(protocol.LICENCES_PATH, body, resend=True)
        signed = self._signed_answer(protocol.LICENCES_PATH, body, response)
        return _Answer(body, response, signed), resent

    def _held(self, *, others: bool) -> dict[str, Any] | None:
        """The licence request whose answer was lost: this process's, else, with ``others``,
        the one in ``pending_<application>.json``; None when there is none, or when the current
        licence answered it after all (its file could not be removed: :meth:`_answered`)."""
        pending = self._pending
        if pending is None and others:
            pending = self._read_unanswered()
        if pending is None or self._licence is None:
            return pending
        sent = [pending.get("nonce"), *(_nonces(pending.get("supersedes", [])) or ())]
        return None if self._licence.request_nonce in sent else pending

    def _unanswered(
        self, now: int, renews: Licence | None, pending: dict[str, Any] | None
    ) -> dict[str, Any] | None:
        """The licence request ``pending`` whose answer was lost (:meth:`_held`), to be sent
        again as it is: when its timestamp is within the server's window of ``now`` (after it:
        a clock NTP stepped back a little since) and it asks what a request of this runtime
        renewing ``renews`` would (only the timestamp, the nonce and what it ``supersedes``
        differ; with ``renews`` None, the licence it renews may have expired since). Else
        None, and a new request is signed."""
        if pending is None:
            return None
        timestamp, nonce = pending.get("timestamp"), pending.get("nonce")
        if not _is_count(timestamp) or abs(now - timestamp) > protocol.TIMESTAMP_WINDOW_S:
            return None
        expected = self._licence_body(timestamp, renews) | {"nonce": nonce}
        if renews is None and "renews" in pending:  # that licence expired since: still a licence
            expected["renews"] = pending["renews"]
        if "supersedes" in pending:
            expected["supersedes"] = _nonces(pending["supersedes"])
        if not isinstance(nonce, str) or pending != expected:
            return None
        log.warning(
            "Sending the licence request of %s again, whose answer was lost: the server may "
            "have granted it, and a new request would be charged again",
            _when(timestamp),
        )
        self._pending = pending
        return pending

    def _superseded(self, pending: dict[str, Any]) -> list[str]:
        """The nonces a new licence request names as ``supersedes`` in place of the unanswered
        request ``pending``: its own and those it superseded (the first and the latest
        :data:`_SUPERSEDED_KEPT`), less the one that never reached the server
        (:attr:`_never_sent`: else a request granted after a refused one would be dropped from a
        long chain). The server may have granted any of them, and answers the new request with
        that licence, uncharged, while it is valid. None (``[]``) when ``pending`` is not a
        request of this runtime."""
        earlier = _nonces(pending.get("supersedes", []))
        chain = None if earlier is None else _nonces([*earlier, pending.get("nonce")])
        if chain is None:
            return []
        chain = [nonce for nonce in chain if nonce != self._never_sent]
        if len(chain) > _SUPERSEDED_KEPT:
            return [chain[0], *chain[1 - _SUPERSEDED_KEPT :]]
        return chain

    def _read_unanswered(self) -> dict[str, Any] | None:
        """The request in ``pending_<application>.json``, or None (none, or one that cannot be
        used: not JSON, not owner-only, not a file, unreadable; warned about, and replaced by
        the next request: it holds no secret, and a new request is all that ignoring it costs)."""
        try:
            pending = read_private_json(self._pending_path)
        except LicenceError as e:
            problem = e.problem if isinstance(e, MalformedStateError) else str(e)
            log.warning("Ignoring %s: %s", self._pending_path, problem)
            return None
        return pending if isinstance(pending, dict) else None

    def _hold_unanswered(self, body: dict[str, Any]) -> None:
        """Keep the licence request ``body`` until it is answered (:meth:`_answered`), in
        memory and in ``pending_<application>.json``, before it is sent: a process that stops
        before the answer, or a restarted one, sends it again (:meth:`_unanswered`)."""
        self._pending = body
        try:
            with state_lock(self.state_dir, f"pending_{self.application}"):
                write_private(self._pending_path, protocol.canonical_bytes(body))
        except LicenceError as e:
            log.warning("The licence request is kept in memory only: %s", e)

    def _answered(self, body: dict[str, Any]) -> None:
        """Forget the licence request ``body``: the server answered it. The file is removed
        only while it holds this request (another process may have written its own since);
        where it cannot be (a read-only or full state folder) it stays, with a warning: the
        answer is not lost for it, and a resend of an answered request is answered again.
        Every request sent is held first (:meth:`_hold_unanswered`, :meth:`_unanswered`), so
        one no longer held was forgotten already: the file is not read again."""
        if self._pending is None or self._pending.get("nonce") != body["nonce"]:
            return
        self._pending = None
        try:
            with state_lock(self.state_dir, f"pending_{self.application}"):
                try:
                    held = read_private_json(self._pending_path)
                except LicenceError:  # not JSON, unreadable: replaced by the next request
                    return
                if isinstance(held, dict) and held.get("nonce") == body["nonce"]:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self._pending_path)
        except (LicenceError, OSError) as e:
            log.warning(
                "The answered licence request stays in %s (%s): a later request may send it "
                "again, answered, uncharged, as it was; make the state folder writable",
                self._pending_path,
                e,
            )

    def _licence_body(self, now: int, renews: Licence | None) -> dict[str, Any]:
        """A licence request stamped ``now``, with a new nonce (signed by :meth:`_post`)."""
        body = {
            "device_id": self.identity.device_id,
            "customer_id": self.customer_id,
            "application": self.application,
            "models": self.models,
            "config_sha256": self.config_sha256,
            "signing_public_key": self.identity.signing_public_key_b64,
            "exchange_public_key": self.identity.exchange_public_key_b64,
            "timestamp": now,
            "nonce": protocol.new_nonce(),
        }
        if self.requested_inferences is not None:  # leave quota for the customer's other devices
            body["requested_inferences"] = self.requested_inferences
        if self.configuration is not None:  # the vendor's proof of the customer id
            body["configuration"] = self.configuration
        if renews is not None:  # kept, free of charge, when a new one would not better it
            body["renews"] = renews.licence_id
        return body

    def _verified_answer(self, answer: _Answer, now: int) -> Licence:
        """The licence in the server's answer to the licence request sent at ``now``.

        Raises:
            LicenceError: not a 200 JSON answer, not signed by a pinned key, not for this
                runtime or this request, or already expired.
        """
        response, nonce = answer.response, answer.body["nonce"]
        if response.status_code != 200:
            if answer.signed is not None:
                raise LicenceError(
                    f"The licence server at {self.server_url} refused the licence request with "
                    f"HTTP {response.status_code} {response.text[:300]!r}, an answer it signed "
                    "that is neither a licence nor a denial: it does not take the request as "
                    "valid. Upgrade the older of the two (sklicense or skruntime) when they "
                    "speak different protocol versions, else fix the field the answer names "
                    "(it comes from the runtime's configuration)."
                )
            raise LicenceError(
                f"The licence server at {self.server_url} answered HTTP "
                f"{response.status_code} to a licence request, not a licence or a denial "
                f"signed by a pinned server key: {response.text[:200]!r}. {_NOT_SIGNED}"
            )
        try:
            document = response.json()
        except (ValueError, RecursionError):
            raise LicenceError(
                f"The licence server at {self.server_url} answered a licence request with "
                f"non-JSON content {response.text[:200]!r} (or JSON nested too deeply). Check "
                "the server URL: a proxy or a captive portal may be in the way."
            ) from None
        if not isinstance(document, dict) or not isinstance(document.get("licence"), dict):
            raise LicenceError(
                f"The licence server at {self.server_url} answered a licence request with "
                f"{response.text[:200]!r}, not a licence document ({{licence, signature}}). "
                "Check the server URL: a proxy or a captive portal may be in the way, or it is "
                "not an sklicense server."
            )
        licence = Licence.from_document(document, self._pinned)
        self._check_licence(licence)
        if licence.request_nonce != nonce and not self._superseded_grant(licence, answer):
            raise LicenceError(
                f"Licence {licence.licence_id} does not echo this request's nonce: it is a "
                "replayed or substituted answer. Check the network path to the licence server."
            )
        if licence.expires_at <= now:
            raise LicenceError(
                f"The licence server issued licence {licence.licence_id} at "
                f"{_when(licence.issued_at)}, expiring at {_when(licence.expires_at)}, which "
                f"this device's clock ({_when(now)}) has passed already: check the server's "
                "and this device's clocks (NTP)."
            )
        return licence

    def _superseded_grant(self, licence: Licence, answer: _Answer) -> bool:
        """Whether ``licence`` answered a request that the licence request answered
        ``supersedes`` (its answer lost): granted to it, or to one it superseded in turn (the
        server then names it as ``request_nonce``), and the server answered it to that
        request itself: its answer's signature (:meth:`_signed_answer`) binds that old
        licence to this request."""
        return licence.request_nonce in answer.body.get("supersedes", ()) and (
            answer.signed is not None
        )

    def _renewal_opens(self, licence: Licence) -> float:
        """When renewing ``licence`` for its validity starts. Each renewal draws a new allowance
        from the quota: a licence no longer than the overlap (every use would renew it) is
        renewed from its half-life. One a renewal could not extend (the contract end) is
        checked with the server instead, which charges nothing for that: inside the overlap
        window, once per ``contract_end_check_seconds`` after the last check (:meth:`consume`
        still renews it when its allowance is used up)."""
        if _at_contract_end(licence):
            checks = _checked_at(licence) + self.contract_end_check_seconds
            return min(licence.expires_at, max(licence.expires_at - self.overlap_seconds, checks))
        duration = licence.expires_at - licence.issued_at
        return licence.expires_at - (
            self.overlap_seconds if duration > self.overlap_seconds else duration / 2
        )

    def _switch(self, licence: Licence, *, fresh: bool) -> None:
        """Make ``licence`` the current one and open its counter entry (``fresh``: just issued
        by the server, else read from the cache); an unusable answer held before is dropped
        (it was about the licence this one replaces)."""
        old = self._licence
        if old is not None and old.licence_id != licence.licence_id:
            self._release()
        self._licence = licence
        self._available = 0
        self._bad_answer = None
        self._open_counter(licence, fresh=fresh)

    def _open_counter(self, licence: Licence, *, fresh: bool) -> None:
        """Create or update the counter entry of ``licence`` and note it as counted here.

        A cached licence whose entry is missing gets one only while it is still the cached
        licence: otherwise another process renewed, used it up and dropped its entry after the
        cache was read, and counting it again from 0 would spend its allowance twice.
        """
        licence_id = licence.licence_id
        with state_lock(self.state_dir, f"usage_{self.application}"):
            usage = self._read_usage()
            entry = usage.get(licence_id)
            if entry is None:
                if not fresh and self._cached_licence_id() != licence_id:
                    self._counted.add(licence_id)  # used up: consume() renews
                    return
                entry = usage[licence_id] = {"counter": 0, "reported": 0}
            before = dict(entry)
            _describe(entry, licence)
            if entry != before:
                self._write_usage(usage)
            self._counted.add(licence_id)

    def _renew_due(self, now: int, renews: Licence | None = None) -> Licence:
        """:meth:`_renew` the licence that :meth:`ensure_licence` found due (``renews``: in its
        window; None: expired or missing), one process of the device at a time: each renewal
        draws an allowance, so processes whose licence fell due together drew one each. A
        process that waited for another's renewal takes the licence it cached; one renewing a
        valid licence does not wait: it goes on with it, and takes the other's from the cache at
        a later call.
        """
        # an expired licence waits, at most about one renewal's requests (public key, usage
        # report, licence: timeout each), then renews alone: a holder stopped (SIGSTOP, a
        # debugger) or a forked child that kept the lock must not stop every other process, and
        # with the server down each waiter would otherwise wait for every failure before its own
        wait = 0.0 if renews is not None else 3 * self._timeout
        with self._renewal_lock(wait=wait) as alone:
            if renews is not None and not alone:
                return renews
            taken = self._renewed_meanwhile(now, checked=renews is not None)
            return taken if taken is not None else self._renew(now, renews)

    def _renewal_lock(self, *, wait: float) -> contextlib.AbstractContextManager[bool]:
        """The device's lock on renewing this application's licence
        (``.renew_<application>.lock``), waited for at most ``wait`` seconds; it yields whether
        it is held (else the caller goes on alone)."""
        return state_lock(self.state_dir, f"renew_{self.application}", wait_seconds=wait)

    def _renewed_meanwhile(self, now: int, *, checked: bool) -> Licence | None:
        """The licence another process cached while this one waited to renew, made the current
        one, when there is one to go on with (else None): for a renewal for validity
        (``checked``), a later one than the current one (:meth:`_take_cached`: also the current
        one checked later, as at the contract end, or kept while the later one is issued ahead
        of this clock); else another licence than the current one
        (expired), valid now, with inferences left to count (an allowance smaller than
        ``persist_every`` is reserved whole by the process that renewed)."""
        current = self._licence
        if checked or current is None:
            taken = self._take_cached(now)
            later = taken is not current or now < self._next_retry  # or one issued ahead
            return taken if taken is not None and later and now < taken.expires_at else None
        cached = self._other_cached(current, self._load_cached())
        if cached is None or (
            cached.inferences is not None
            and self._read_usage().get(cached.licence_id, {}).get("counter", 0) >= cached.inferences
        ):
            return None
        self._switch(cached, fresh=False)
        return cached

    def _renew(self, now: int, renews: Licence | None = None) -> Licence:
        """Report usage, then request a licence (``renews``: see :meth:`_request`).

        Raises:
            _RenewalFailed: no licence decision came back (retried after ``retry_seconds``).
            LicenceDeniedError: the server's denial (retried after ``retry_seconds``;
                one of :data:`_ENDS_LICENCE` also drops the cached licence).
        """
        self._release()
        self.report_usage()
        try:
            return self._request(now, renews)
        except LicenceDeniedError as e:
            if e.reason in _ENDS_LICENCE:  # at once, even inside the licence's validity
                self._drop_cache()
            self._next_retry = now + self.retry_seconds
            raise
        except _RenewalFailed:
            self._next_retry = self._retry_after(now)
            raise

    def _retry_after(self, now: int) -> float:
        """When to try again after a renewal at ``now`` failed: ``retry_seconds`` later, or
        sooner while a licence request whose answer was lost can still be sent again
        (:data:`_RESEND_BY_S` after its timestamp): the server may have granted it, and a new
        request after the window would be charged again."""
        retry = now + self.retry_seconds
        if self._pending is None:
            return retry
        resend_at = self._pending["timestamp"] + _RESEND_BY_S
        return resend_at if now < resend_at < retry else retry

    def _take_cached(self, now: int) -> Licence | None:
        """Make the cached licence the current one when it is later than the current one, or
        as late but issued later (renewed at the contract end: renewing it again would only
        draw more quota), or checked later: another process renewed or checked it. While it is
        issued ahead of ``now`` (:meth:`_ahead`), a valid licence is used instead, deferring to
        it (:meth:`_defer_to`): the current one, else the one it replaces, cached beside it
        (:meth:`_previous`: a process started after the renewal). Returns the current
        licence."""
        licence, cached = self._licence, self._load_cached()
        if (
            cached is not None
            and self._ahead(cached, now)
            and (licence is None or cached.licence_id != licence.licence_id)
        ):
            meanwhile = (
                licence
                if licence is not None and now < licence.expires_at
                else self._previous(cached, now)
            )
            if meanwhile is not None:
                self._defer_to(cached)
                cached = meanwhile
        if cached is not None and (
            licence is None
            or (cached.expires_at, cached.issued_at, _checked_at(cached))
            > (licence.expires_at, licence.issued_at, _checked_at(licence))
        ):
            if licence is not None and cached.licence_id == licence.licence_id:
                self._licence = cached  # its counter and reservation stay
            else:
                self._switch(cached, fresh=False)
            return cached
        return licence

    def _failure(self, e: _RenewalFailed) -> str:
        """Why a renewal failed, for a warning or an error message."""
        if isinstance(e, _Unreachable) and e.answered:
            return f"the licence server at {self.server_url} answered with an error, {e}"
        if isinstance(e, _Unreachable):
            return f"the licence server at {self.server_url} is unreachable: {e}"
        return f"the licence server's answer is unusable: {e}"

    def ensure_licence(self) -> Licence:
        """A valid licence for this application: the cached one, renewed inside the overlap
        window, or a new one.

        Raises:
            ClockRollbackError: the clock is before the last time seen (and the server does not
                confirm it) or before the licence's issue.
            LicenceDeniedError: the server refused (``.reason`` is its code).
            LicenceUnavailableError: no valid licence and the server is unreachable or
                answers with a server error (5xx, its detail quoted).
            LicenceError: no valid licence and the server presents another key than the
                pinned one, or its answer is not a verified licence for this request; a state
                file is malformed, or the client is closed.
        """
        with self._lock:
            if self._closed:
                raise LicenceError("The licence client is closed; create a new runtime.")
            try:
                now = self._now()
            except ClockRollbackError as rollback:
                return self._confirm_clock(rollback)
            licence = self._licence
            if licence is None or now >= self._renewal_opens(licence):
                licence = self._take_cached(now)  # another process may have renewed it
            if licence is not None:
                self._check_issued(licence, now)
                if now < self._renewal_opens(licence):
                    return licence
                if now < licence.expires_at:  # overlap window: renew, keep it on failure
                    if now < self._next_retry:
                        return licence
                    try:
                        renewed = self._renew_due(now, renews=licence)
                    except _RenewalFailed as e:
                        log.warning(
                            "Licence renewal failed (%s); the current licence stays valid until "
                            "%s. Next attempt after %s.",
                            self._failure(e),
                            _when(licence.expires_at),
                            _when(self._next_retry),
                        )
                        return licence
                    except LicenceDeniedError as e:
                        if e.reason in _ENDS_LICENCE:
                            raise
                        log.warning(
                            "Licence renewal denied (%s); the current licence stays valid "
                            "until %s.",
                            e.reason,
                            _when(licence.expires_at),
                        )
                        return licence
                    if now >= self._renewal_opens(renewed):
                        # the renewed licence is already due (a very short one, issued by a
                        # server clock behind this one): ask again only after retry_seconds,
                        # not on every inference
                        self._next_retry = max(self._next_retry, now + self.retry_seconds)
                    return renewed
            try:
                self._refuse_held(now)
                try:
                    return self._renew_due(now)
                except _BadAnswer as e:
                    if e.held:
                        self._bad_answer = (self._next_retry, e.error)
                    raise
            except _BadAnswer as e:
                raise e.error from None
            except _Unreachable as e:
                if licence is not None:
                    expired = _when(licence.expires_at)
                    what = f"The licence for {self.application!r} expired at {expired}"
                    advice = "Restore the connection to the server to renew it."
                else:
                    what = f"No licence for {self.application!r} on this device"
                    advice = "Connect to the server once to obtain a licence."
                server = f"the licence server at {self.server_url}"
                if e.answered:
                    server, advice = f"{server} answered with an error, {e}", _SERVER_ERROR_ADVICE
                else:
                    server = f"{server} is unreachable ({e})"
                raise LicenceUnavailableError(f"{what} and {server}. {advice}") from None

    def _refuse_held(self, now: int) -> None:
        """With no valid licence, raise the server's last answer again, unusable, while
        ``retry_seconds`` have not passed since (:attr:`_bad_answer`), instead of asking anew:
        the request may well have drawn an allowance from the customer's quota (a licence
        expired on arrival, a proxy's page in place of the licence), and so would each new one,
        at every call. The server's key is checked first (free: no licence request), so that a
        key changed since is said.

        Raises:
            _BadAnswer: the held answer, or the server's key is not a pinned one.
            _Unreachable: the server's key could not be asked for.
        """
        held = self._bad_answer
        if held is None or now >= held[0]:
            return
        self._check_server_key()
        raise _BadAnswer(
            LicenceError(
                f"{held[1]} (The licence server's last answer: it is asked again after "
                f"{_when(held[0])}, retry_seconds after it, since each licence request may draw "
                "an allowance from the customer's quota.)"
            )
        )

    def _confirm_clock(self, rollback: ClockRollbackError) -> Licence:
        """The clock is before the last time seen: let the licence server settle which is right.

        The server refuses a request stamped more than its window off its own time
        (``stale_request``) before it answers anything else, and signs every answer for its very
        request: its signed answer to a usage report stamped with the local time
        (:meth:`_report_confirms_clock`) proves, free of charge, that it agrees with this clock.
        Without that proof to ask for, a licence it issues for a request stamped with the local
        time, echoing its nonce, within ``clock_tolerance`` of it proves it, for the allowance it
        draws; processes confirming together draw one (:meth:`_licence_confirming`). Then the
        last time seen (a clock that had jumped forward) is reset. Otherwise
        ``rollback`` stands, with the server's reason; the server is asked at most once per
        ``retry_seconds``.
        """
        now = int(self._clock())
        if now < self._next_clock_check:
            raise rollback
        self._next_clock_check = now + self.retry_seconds
        seen = self._cached_licence_id()  # one cached after this was issued after this
        licence: Licence | None = None
        try:
            proof = self._report_confirms_clock(now)
            if proof is None:
                licence = self._licence_confirming(now, seen)
        except _RenewalFailed as e:
            cause = self._failure(e)
            if isinstance(e, _Unreachable):  # reached, a server error: no connection to restore
                cause += "; if this clock is right (it was ahead before), " + (
                    "try again once the server's administrator has fixed what its answer names"
                    if e.answered
                    else "connect the device to the licence server once to confirm it"
                )
        except LicenceDeniedError as e:
            if e.reason == "device_revoked":
                raise
            cause = f"it refused the request: {e.reason}" + (f", {e.detail}" if e.detail else "")
        else:
            if licence is not None:
                proof = f"licence {licence.licence_id} issued at {_when(licence.issued_at)}"
            if licence is None or abs(licence.issued_at - now) <= self.clock_tolerance:
                log.warning(
                    "The system clock (%s) is before the last time this device saw (%s), but "
                    "the licence server confirms it (%s): the last time seen is reset.",
                    _when(now),
                    _when(self._last_seen),
                    proof,
                )
                self._reset_last_seen(now)
                return licence if licence is not None else self.ensure_licence()
            cause = f"it issued {proof}"
        raise ClockRollbackError(
            f"{rollback} The licence server did not confirm this clock ({cause})."
        ) from None

    def _licence_confirming(self, now: int, seen: str | None) -> Licence:
        """A licence to confirm the clock ``now`` with, for :meth:`_confirm_clock`: asked for
        by one process of the device at a time, as in :meth:`_renew_due` (each draws an
        allowance), waiting at most about one renewal's requests. One that waited takes the
        licence another process cached meanwhile when the server issued it within
        ``clock_tolerance`` of ``now``: just issued, its signed issue time is the server's
        word on the time, as a licence of its own would be. Not so the licence cached before
        (``seen``, the cache's licence id when this process began to confirm): issued long
        ago, it may well match a clock set back to then.

        Raises:
            _RenewalFailed, LicenceDeniedError: as :meth:`_renew`.
        """
        with self._renewal_lock(wait=3 * self._timeout):
            cached = self._load_cached()
            if (
                cached is not None
                and cached.licence_id != seen
                and abs(cached.issued_at - now) <= self.clock_tolerance
                and now < cached.expires_at
            ):
                self._switch(cached, fresh=False)
                return cached
            return self._renew(now)

    def _report_confirms_clock(self, now: int) -> str | None:
        """The server's free word that it agrees with the clock ``now``, for
        :meth:`_confirm_clock`: it answers a usage report of the current (else the cached)
        licence stamped ``now``, at its counter (a duplicate when reported already), with a
        receipt or ``counter_behind`` signed for that report, which it gives only to a
        timestamp inside its window. Returns what proves it, or None when a licence request is
        needed instead: no licence to report on, a ``clock_tolerance`` narrower than the
        server's window (the receipt proves no more), a server that does not know the licence
        or the device, or an answer not signed for the report (a server older than the
        signed answers, or a man in the middle).

        Raises:
            _Unreachable: no answer, or a server error.
            LicenceDeniedError: the server's signed denial (``stale_request``: it does not
                agree).
        """
        licence = self._licence or self._load_cached()
        if licence is None or self.clock_tolerance < protocol.TIMESTAMP_WINDOW_S:
            return None
        self._release()  # report only inferences that ran
        with state_lock(self.state_dir, f"usage_{self.application}"):
            usage = self._read_usage()
            if self._settle_holders(usage):
                self._write_usage(usage)
            entry = usage.get(licence.licence_id)
            counter = 0 if entry is None else _used(entry)
        body = self._report_body(licence.licence_id, counter, now)
        response, _ = self._post(protocol.USAGE_PATH, body)
        data = self._signed_answer(protocol.USAGE_PATH, body, response)
        if data is None:
            return None
        reason, detail = data.get("reason"), data.get("detail")
        if not _acknowledges(response, data, body) and reason != "counter_behind":
            if data.get("decision") == "deny" and isinstance(reason, str) and reason:
                if reason in ("unknown_licence", "unknown_device"):
                    return None
                raise LicenceDeniedError(reason, detail if isinstance(detail, str) else "")
            return None
        try:  # reported (or, counter_behind, dropped) as report_usage() would
            self._record_reported({licence.licence_id: counter}, licence.licence_id)
        except LicenceError as e:
            log.warning("Usage report sent but not recorded: %s", e)
        return f"its signed answer to usage report {body['report_id']}"

    def _drop_cache(self) -> None:
        """Forget the current licence and remove the cache file (the server ended it), under
        the licence lock that :meth:`_cache` writes under: a process checking that the cache
        still holds a licence before noting it (:meth:`_keep`) would otherwise write the
        licence back between its check and its write, for every process to use."""
        self._release()
        self._licence = self._uncached = None
        with (
            state_lock(self.state_dir, f"licence_{self.application}"),
            contextlib.suppress(FileNotFoundError),
        ):
            os.unlink(self._licence_path)

    def kek(self) -> bytes:
        """The application's key-encryption key from a valid licence (in memory only).

        Raises:
            LicenceError: the licence carries no key, or not for this device's key (and the
                errors of :meth:`ensure_licence`).
        """
        with self._lock:
            licence = self.ensure_licence()
            if licence.wrapped_kek is None:
                licence = self._with_kek(licence)
            return unwrap_kek(licence, self.identity.exchange_key)

    def _with_kek(self, licence: Licence) -> Licence:
        """``licence``, which carries no KEK (the server had none for the application when it
        issued it), answered again by the server, which wraps the KEK it has now to it: a
        licence request that ``supersedes`` the one it was granted to, answered with it,
        uncharged (:func:`sklicense.decision.resendable`; a licence no longer answerable so,
        its allowance reported used up, is renewed as :meth:`_renew` would; a licence another
        process renewed to, cached with the KEK, is taken instead, and a server older than
        ``supersedes`` is not asked: without the field it would charge). Asked at most once
        per ``retry_seconds`` by this process; ``licence`` itself when none is had (the server
        still has no KEK, or fails: warned about). Before 2026-12-07 the device stayed without
        the KEK, for every load, until the licence fell due for renewal (months; at the
        contract end, never), whatever the administrator imported meanwhile.

        Raises:
            LicenceDeniedError: ``device_revoked`` or ``contract_ended`` (the licence dropped).
        """
        now = self._now()
        if now < self._next_kek_request:
            return licence
        self._next_kek_request = now + self.retry_seconds
        with self._renewal_lock(wait=3 * self._timeout):
            cached = self._load_cached()
            if (
                cached is not None
                and cached.licence_id == licence.licence_id
                and (cached.wrapped_kek is not None)
            ):  # another process had it answered again
                self._licence = cached
                return cached
            other = self._other_cached(licence, cached)
            if (
                other is not None
                and other.wrapped_kek is not None
                and (
                    other.inferences is None
                    or self._read_usage().get(other.licence_id, {}).get("counter", 0)
                    < other.inferences
                )
            ):  # another process renewed, with the KEK: asking would charge if ours is used up
                self._switch(other, fresh=False)
                return other
            try:
                return self._request(now, also=[licence.request_nonce])
            except LicenceDeniedError as e:
                if e.reason in _ENDS_LICENCE:
                    self._drop_cache()
                    raise
                cause = f"it was denied: {e.reason}"
            except _RenewalFailed as e:
                cause = self._failure(e)
        log.warning(
            "Licence %s could not be had with its key-encryption key (%s).",
            licence.licence_id,
            cause,
        )
        return licence

    # ------------------------------------------------------------------ counting

    def _take(self, licence: Licence, n: int) -> bool:
        """Take ``n`` inferences of ``licence``: from the reservation, topped up by a block
        reserved in the counter file; False (nothing taken) if that would go over."""
        if n <= self._available:
            self._available -= n
            return True
        with state_lock(self.state_dir, f"usage_{self.application}"):
            usage = self._read_usage()
            entry = usage.get(licence.licence_id)
            if entry is None:
                if licence.licence_id in self._counted:
                    return False  # counted here, then dropped: never counted again from 0
                entry = usage[licence.licence_id] = {"counter": 0, "reported": 0}
            _describe(entry, licence)
            counter = entry["counter"]
            need = n - self._available
            block = max(need, self.persist_every - self._available)
            if licence.inferences is not None:
                if counter + need > licence.inferences:
                    return False
                block = min(block, licence.inferences - counter)
            entry["counter"] = counter + block
            available = self._available + block - n
            if self._holder.hold():  # else counted as run when another runtime reports
                _note_held(entry, self._holder.token, available)
            self._write_usage(usage)
            self._counted.add(licence.licence_id)
            self._available = available
        self._cache_again()  # the state folder takes writes again
        return True

    def _release(self) -> None:
        """Give the unused reservation of the current licence back (never below reported), and
        its note of what this runtime holds, which may be left from an earlier write when the
        reservation was used up since."""
        licence, available = self._licence, self._available
        if licence is None or licence.licence_id not in self._counted:
            return
        with state_lock(self.state_dir, f"usage_{self.application}"):
            usage = self._read_usage()
            entry = usage.get(licence.licence_id)
            if entry is not None and (available or self._holder.token in entry.get("held", {})):
                entry["counter"] = max(entry["counter"] - available, entry.get("reported", 0))
                _note_held(entry, self._holder.token, 0)
                self._write_usage(usage)
            self._available = 0

    def _settle_holders(self, usage: dict[str, dict[str, Any]]) -> bool:
        """Bring the notes of what runtimes hold up to date in ``usage`` (read under its lock):
        this runtime's is what it has left, and what runtimes no longer running held counts as
        run (their notes go). Returns whether anything changed."""
        current = self._licence.licence_id if self._licence is not None else None
        token = self._holder.token
        seen: dict[str, bool] = {}
        changed = False
        for licence_id, entry in usage.items():
            held = entry.get("held", {})
            for holder, count in list(held.items()):
                if holder == token:
                    left = self._available if licence_id == current else 0
                else:
                    if holder not in seen:  # one look per runtime, not per licence it holds
                        seen[holder] = running(self.state_dir, holder)
                    if seen[holder]:
                        continue
                    left = 0
                if left != count:
                    _note_held(entry, holder, left)
                    changed = True
        # every report, not only when a note went: a runtime killed while it noted nothing
        # (its block used up at its write, or killed before its first write) left its file
        sweep(self.state_dir)
        return changed

    def _other_cached(self, licence: Licence, cached: Licence | None) -> Licence | None:
        """The licence of the cache (``cached``: :meth:`_load_cached`, read by the caller) to
        go on with when it is another one than ``licence`` and valid now: the cache only ever
        receives licences just issued, so another process renewed. While ``cached`` is issued
        ahead of this clock, that is the licence cached beside it (:meth:`_previous`)."""
        now = int(self._clock())
        if cached is not None and self._ahead(cached, now):
            cached = self._previous(cached, now)
        if cached is None or cached.licence_id == licence.licence_id:
            return None
        if not cached.issued_at - self.clock_tolerance <= now < cached.expires_at:
            return None
        return cached

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
            if self._take(licence, n):
                return
            for _ in range(_RENEWALS_PER_CONSUME):
                if int(self._clock()) < self._next_retry:
                    cached = self._load_cached()
                    if self._other_cached(licence, cached) is None:
                        # nothing to take and no renewal due yet: said at once, not after
                        # waiting for the renewal lock (another process renewing, stopped, or a
                        # forked child that kept it), on every inference until retry_seconds
                        # pass; the cached licence is read only then (once a renewal is due,
                        # under the lock)
                        self._retry_due(licence, cached)
                # one process at a time, as in _renew_due: one that used the licence up
                # meanwhile waits, then counts on the rest of the new licence (this one counted
                # on it before letting go) instead of drawing an allowance of its own
                with self._renewal_lock(wait=3 * self._timeout):
                    cached = self._load_cached()
                    other = self._other_cached(licence, cached)
                    if other is not None:
                        self._switch(other, fresh=False)
                        licence = other
                        if self._take(licence, n):
                            return
                    licence, now = self._renew_used_up(licence, cached)
                    if self._take(licence, n):
                        return
                if licence.inferences is not None and licence.inferences < n:
                    self._next_retry = now + self.retry_seconds
                    raise QuotaExhaustedError(
                        f"The new licence {licence.licence_id} grants {licence.inferences} "
                        f"inferences, fewer than the {n} asked. Ask the licence administrator to "
                        "raise the quota."
                    )
                # it grants enough, but a runtime sharing the state folder reserved all of it
                # between its caching and this take (one whose licence fell due takes the cached
                # one, one that waited past the lock's bound goes on alone): renew again,
                # without waiting retry_seconds
            raise QuotaExhaustedError(
                f"The {_RENEWALS_PER_CONSUME} licences renewed for this inference were each used "
                f"up by other runtimes sharing the state folder {self.state_dir} before this one "
                "could count on them. Raise requested_inferences (each licence's allowance), or "
                "give each runtime its own state folder."
            )

    def _renew_used_up(self, licence: Licence, cached: Licence | None) -> tuple[Licence, int]:
        """A new licence in place of ``licence``, whose allowance is used up (or whose counter
        is gone), and the time it was asked at (``cached``: as :meth:`_retry_due`).

        Raises:
            QuotaExhaustedError: the last renewal failed less than ``retry_seconds`` ago, or
                this one fails or is denied (other than ``device_revoked``).
            LicenceDeniedError: ``device_revoked``; and the errors of :meth:`_now`.
        """
        used_up = self._used_up(licence)
        now = self._retry_due(licence, cached)
        try:
            return self._renew(now), now
        except _RenewalFailed as e:
            raise QuotaExhaustedError(f"{used_up} and {self._failure(e)}.") from None
        except LicenceDeniedError as e:
            if e.reason == "device_revoked":
                raise
            raise QuotaExhaustedError(
                f"{used_up} and the licence server grants no more ({e.reason}"
                + (f": {e.detail}" if e.detail else "")
                + "). "
                + DENIAL_ADVICE.get(e.reason, "Ask the licence administrator.")
            ) from e

    def _used_up(self, licence: Licence) -> str:
        """What is used up of ``licence``, for an error message: its allowance, or its counter."""
        return (
            f"The allowance of licence {licence.licence_id} "
            f"({_inferences(licence.inferences)}) is used up"
            if licence.inferences is not None
            else f"The counter of licence {licence.licence_id} is gone from {self._usage_path}"
        )

    def _retry_due(self, licence: Licence, cached: Licence | None) -> int:
        """The time now, when a renewal of ``licence`` (used up) may be asked for; ``cached``:
        the cache file's licence, read by the caller.

        Raises:
            ClockRollbackError: the renewal is ``cached``, issued ahead of this clock
                (:meth:`_defer_to`): said so, not as a server that "granted no more".
            QuotaExhaustedError: the last renewal failed less than ``retry_seconds`` ago.
            and the errors of :meth:`_now`.
        """
        now = self._now()
        if cached is not None and cached.licence_id != licence.licence_id:
            self._check_issued(cached, now)
        if now < self._next_retry:
            raise QuotaExhaustedError(
                f"{self._used_up(licence)}; the licence server granted no more at the last "
                f"attempt. Next attempt after {_when(self._next_retry)}."
            )
        return now

    # ------------------------------------------------------------------ usage reports

    def report_usage(self) -> bool:
        """Send a signed report for every licence whose counter is ahead of the last report.

        Idempotent: the report id is ``"<licence_id>:<counter>"``, so a report whose answer was
        lost is applied once by the server when sent again. Only answers signed by the pinned
        key for this very report count (:func:`~.protocol.answer_message`): a receipt
        acknowledges the report; a refusal no resend can change
        (:data:`~.protocol.USAGE_DROP_REASONS`: the server does not know the licence or the
        device, or holds a higher counter) drops it, with one warning. Anything else keeps it
        for the next renewal or close (logged, not raised; answers that are not signed with one
        warning for all). Returns True when everything is reported (or dropped).

        Raises:
            LicenceError: the client is closed (its connection too: it raised ``httpx``'s
                ``RuntimeError``), or the usage file is malformed.
        """
        with self._lock:
            if self._closed:
                raise LicenceError(
                    "The licence client is closed; the usage it could not report is sent by "
                    "the next runtime of its state folder (at a renewal or close()): create a "
                    "new runtime to send it now."
                )
            current = self._licence.licence_id if self._licence is not None else None
            with state_lock(self.state_dir, f"usage_{self.application}"):
                usage = self._read_usage()
                if self._settle_holders(usage):
                    self._write_usage(usage)
                pending = {
                    licence_id: _used(entry)
                    for licence_id, entry in usage.items()
                    if _used(entry) > entry.get("reported", 0)
                }
                # what a dropped report loses: the count since the last acknowledged one
                unreported = {
                    licence_id: counter - usage[licence_id].get("reported", 0)
                    for licence_id, counter in pending.items()
                }
            settled: dict[str, int] = {}  # acknowledged, or dropped: not sent again
            unsigned: list[_Unsigned] = []
            for licence_id, counter in pending.items():  # no file lock held while on the network
                answer = self._send_report(licence_id, counter, unreported[licence_id])
                if isinstance(answer, _Unsigned):
                    unsigned.append(answer)
                    continue
                if answer is None:
                    continue
                settled[licence_id] = counter
                if answer == "unknown_device":  # nor any licence of it: drop them all
                    self._drop_unknown_device(pending, settled, sum(unreported.values()))
                    break
            if unsigned:
                log.warning(
                    "Usage reports of %d licence(s) kept: %s answered them without a signature "
                    "of a pinned server key (first: %s), and only a signed answer "
                    "acknowledges or refuses a report. %s They are sent again at the next "
                    "licence renewal or close().",
                    len(unsigned),
                    self.server_url,
                    unsigned[0].answer,
                    _NOT_SIGNED,
                )
            try:
                return self._record_reported(settled, current)
            except LicenceError as e:  # reported, but not recorded: sent again next time
                log.warning("Usage reports sent but not recorded: %s", e)
                return False

    def _send_report(
        self, licence_id: str, counter: int, unreported: int
    ) -> str | _Unsigned | None:
        """Send one usage report (``unreported``: how many of ``counter`` the server has not
        acknowledged, what a drop loses). Returns ``"accepted"`` or the reason of a denial in
        :data:`~.protocol.USAGE_DROP_REASONS` (logged here, but ``unknown_device``: the caller
        says it once for all reports), both only when signed by a pinned key for this report;
        :class:`_Unsigned` for an answer that is not (the caller warns once for all); None
        for any other failure (logged): the report is sent again."""
        body = self._report_body(licence_id, counter, int(self._clock()))
        try:
            response, _ = self._post(protocol.USAGE_PATH, body)
        except _RenewalFailed as e:  # network errors, 5xx, a redirect, a huge answer
            log.warning("Usage report for licence %s failed: %s. %s", licence_id, e, _RESENT)
            return None
        data = self._signed_answer(protocol.USAGE_PATH, body, response)
        if data is None:
            return _Unsigned(f"HTTP {response.status_code} {response.text[:200]!r}")
        if _acknowledges(response, data, body):
            return "accepted"
        reason, detail = data.get("reason"), data.get("detail")
        if data.get("decision") == "deny" and reason in protocol.USAGE_DROP_REASONS:
            if reason != "unknown_device":  # said once for all the device's reports
                log.warning(
                    "Usage report for licence %s dropped: %s (HTTP %s %s: %s), so it would "
                    "refuse it at every resend.",
                    licence_id,
                    _DROPPED[reason].format(
                        server=self.server_url,
                        counted=_inferences(counter),
                        unreported=_inferences(unreported),
                    ),
                    response.status_code,
                    reason,
                    detail,
                )
            return reason
        log.warning(
            "Usage report for licence %s refused: HTTP %s %s. %s",
            licence_id,
            response.status_code,
            response.text[:200],
            _RESENT,
        )
        return None

    def _report_body(self, licence_id: str, counter: int, timestamp: int) -> dict[str, Any]:
        """A usage report of ``counter`` inferences under ``licence_id`` stamped ``timestamp``;
        its id ``"<licence_id>:<counter>"`` makes a resend a duplicate, applied once."""
        return {
            "device_id": self.identity.device_id,
            "licence_id": licence_id,
            "report_id": f"{licence_id}:{counter}",
            "counter": counter,
            "timestamp": timestamp,
            "nonce": protocol.new_nonce(),
        }

    def _drop_unknown_device(
        self, pending: dict[str, int], settled: dict[str, int], unreported: int
    ) -> None:
        """Add every pending report to ``settled`` (dropped) after the server answered that it
        has not registered this device: it has none of its licences either. One warning, with
        the ``unreported`` inferences the drop loses."""
        settled.update(pending)
        log.warning(
            "Usage reports of %d licence(s) dropped: %s has not registered this device (%s: "
            "unknown_device), so it has none of its licences and would refuse the reports at "
            "every resend; the %s counted under them since their last acknowledged reports "
            "are not reported.",
            len(pending),
            self.server_url,
            self.identity.device_id,
            _inferences(unreported),
        )

    def _record_reported(self, acknowledged: dict[str, int], current: str | None) -> bool:
        """Note the acknowledged (or dropped) counters and drop finished licences; True when all
        reported."""
        with self._lock, state_lock(self.state_dir, f"usage_{self.application}"):
            usage = self._read_usage()
            for licence_id, counter in acknowledged.items():
                if licence_id in usage:
                    entry = usage[licence_id]
                    entry["reported"] = max(entry["reported"], counter)
            keep = {current, self._cached_licence_id()}
            now = int(self._clock())
            done = [
                licence_id
                for licence_id, entry in usage.items()
                if licence_id not in keep and self._finished(entry, now)
            ]
            idle = sorted(  # reported, still usable by a process that holds it: dropped first
                (_partly_used(entry), entry.get("expires_at", 0), licence_id)
                for licence_id, entry in usage.items()
                if licence_id not in keep
                and licence_id not in done
                and entry["counter"] <= entry["reported"]
            )
            surplus = max(len(idle) - _MAX_IDLE_ENTRIES, 0)
            done += [licence_id for *_, licence_id in idle[:surplus]]
            for licence_id in done:
                del usage[licence_id]
            if acknowledged or done:
                self._write_usage(usage)
            return all(_used(e) <= e["reported"] for e in usage.values())

    def _finished(self, entry: dict[str, int], now: int) -> bool:
        """Whether a counter entry can be dropped: fully reported, and its licence can no longer
        be used by any process (expired, or its allowance fully counted).

        An entry of an older runtime (no ``expires_at``) is dropped once reported, as that
        runtime did: no process of this one has counted under it, or it would carry one.
        """
        if entry["counter"] > entry["reported"]:
            return False
        if "expires_at" not in entry:
            return True
        if entry["expires_at"] + self.clock_tolerance <= now:
            return True
        return "inferences" in entry and entry["counter"] >= entry["inferences"]

    def flush(self) -> None:
        """Give back the unused reservation, cache a licence the cache file could not take
        when it was issued, and persist the last time seen."""
        with self._lock:
            self._release()
            self._cache_again()
            self._save_last_seen(closing=True)

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
                self._holder.let_go()
                self._http.close()


_JSON = {"Content-Type": "application/json"}
