"""The licence wire protocol, shared by the runtime's client and the ``sklicense`` server.

Every message body is a JSON object; its *canonical bytes* are
``json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()``.

Device → server (signed by the device's Ed25519 key, header ``X-SK-Signature: <base64>`` over
the canonical bytes of the body). Every device request carries ``device_id`` (str),
``timestamp`` (int, Unix seconds; the server accepts ±:data:`TIMESTAMP_WINDOW_S`) and ``nonce``
(str, 32 hex chars; the server refuses a nonce it has seen for that device: replay).

``POST /v1/licences`` (:class:`LicenceRequest`): ask for a licence. Fields: ``device_id``,
``customer_id`` (int, from the configuration), ``application`` (str), ``models`` (list of
str), ``config_sha256`` (hex of the configuration file), ``signing_public_key`` and
``exchange_public_key`` (base64 raw Ed25519 / X25519 public keys: a new device is registered on
its first request, a known device must present the same keys), ``timestamp``, ``nonce``;
optional ``requested_inferences`` (int >= 1: the allowance asked for, capped by the customer's
remaining quota; absent, the licence grants all the remaining quota) and ``configuration``
(``{"payload": {...}, "signature": "<base64>"}``: the configuration file's signed payload and
signature as the protector wrote them; required by applications whose public key is registered
on the server, which check that their key signed it, for this application, this customer and
these models: ``customer_not_proven`` otherwise), ``renews`` (str, the ``licence_id`` of the
device's licence that this request renews for validity; see below) and ``supersedes`` (list of
at most 16 nonces: earlier requests of the device whose answers were lost and that are too old
to send again; when the server granted one of them to this device, or answered one of them
with a licence granted to a request it superseded in turn, for this customer, application and
models, and that licence is still valid and not reported used up, it answers this request with
that licence, uncharged, ``request_nonce`` the request it was granted to, or, when this one
no longer names it, a named one that was answered with it; the device takes it only with the
answer's signature for this request, and a ``request_nonce`` it names). The signature of a
known device is checked against its registered key; of a new device, against
``signing_public_key``.

``POST /v1/usage`` (:class:`UsageReport`): ``device_id``, ``licence_id``, ``report_id``
(str, unique per device: the server applies a report once), ``counter`` (int, total inferences
run on the device under that licence; monotonic), ``timestamp``, ``nonce``.

Server → device: ``200`` with a :class:`SignedLicence` document ``{"licence": {...},
"signature": "<base64 Ed25519 over the canonical bytes of licence>"}`` signed by the server key
(whose public key the runtime pins). Licence fields: ``licence_id``, ``device_id``,
``customer_id``, ``application``, ``models``, ``issued_at`` (int), ``expires_at`` (int),
``inferences`` (int allowance for this licence, or null when the customer has no quota),
``request_nonce`` (echo of the request's nonce), ``wrapped_kek`` (null, or for applications
with a key-encryption key: ``{"ephemeral_public_key": b64 X25519, "nonce": b64 12 bytes,
"ciphertext": b64}`` = AES-256-GCM under HKDF-SHA256(X25519(ephemeral, device exchange key),
info=b"skprotect-kek-wrap/v1" + licence_id) with the canonical bytes of
``{"licence_id", "device_id", "application"}`` as associated data).

Keep: a request that ``renews`` a licence a new one would not better (a licence of this device,
customer and application, still valid, holding every model asked for, and expiring when the new
one would: the contract end) is answered ``200`` ``{"decision": "keep", "licence_id",
"expires_at", "detail"}`` (:data:`KEEP_DECISION`), after every check up to ``contract_ended``
(so a revoked device gets ``device_revoked``): the device keeps that licence, nothing is issued
or drawn from the quota. A renewal that would expire later (a contract extended) or sooner (one
shortened) is issued as usual, and a ``renews`` naming another licence (unknown, of another
device, expired, lacking a model) makes a plain request. Only a device that needs no new
allowance names it: one whose allowance is used up asks without it.

Denials: ``403`` with ``{"decision": "deny", "reason": <code>, "detail": <text>}``; reason codes
are :data:`DENY_REASONS` (``device_customer_mismatch``: a known device asks for another customer
than the one it is registered to). ``429`` with reason ``rate_limited`` when a device asks too
often. Usage reports answer ``200`` ``{"accepted", "duplicate", "report_id", "licence_id",
"counter"}`` (a repeated ``report_id`` is a duplicate, not an error), and denials for reports
the server will never take, whose reason is one of :data:`USAGE_DROP_REASONS`: ``404``
``unknown_licence`` (a licence this server did not issue to the device), ``403``
``unknown_device`` (a device it has not registered), ``409`` ``counter_behind`` (a counter
lower than one already reported for the licence).

Signed answers. Every answer of the server to a device request that is a JSON object (the
licence, the usage receipt, every denial, a 422) carries the header ``X-SK-Signature``: the
base64 Ed25519 signature by the server key of the canonical bytes of :func:`answer_message`,
``{"path", "status", "request_sha256", "answer"}``: the request's path (:data:`LICENCES_PATH`,
:data:`USAGE_PATH`), the HTTP status, the SHA-256 (hex) of the canonical bytes of the request
body and the answer's JSON body. The request's digest binds the answer to that very request
(its ``device_id``, ``nonce``, ``report_id``, ``licence_id``, counter...): a signed answer
cannot be replayed for another request, and nobody in the network path can fake one. The
device takes an answer as the server's word only when it verifies with the pinned key: a
usage report is acknowledged by a signed ``200`` whose ``accepted`` is true and whose
``report_id`` is the report's, dropped on a signed denial of :data:`USAGE_DROP_REASONS`, and
kept (sent again) on anything else; a denial or a ``keep`` of a licence request is taken only
when signed (an unsigned one is a failed request, like a proxy's page). Bodies that are not a
JSON object (``400``) or too large (``413``) are answered before there is a request to bind,
unsigned.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

SIGNATURE_HEADER = "X-SK-Signature"
"""The header of a device request's signature, and of the server's signature of its answer."""
LICENCES_PATH = "/v1/licences"
USAGE_PATH = "/v1/usage"
TIMESTAMP_WINDOW_S = 300
MAX_DEVICE_BODY = 256 * 1024
"""Bytes a device request may have: a licence request is about 1 KiB plus its configuration's
signed payload (about 0.5 KiB per model), so about 500 models."""
KEK_WRAP_INFO = b"skprotect-kek-wrap/v1"

DENY_REASONS = (
    "unknown_application",
    "unknown_customer",
    "contract_ended",
    "device_revoked",
    "too_many_devices",
    "quota_exhausted",
    "bad_signature",
    "stale_request",
    "replayed_request",
    "device_key_mismatch",
    "unknown_model",
    "rate_limited",
    "device_customer_mismatch",
    "customer_not_proven",
)

KEEP_DECISION = "keep"
"""The ``decision`` of the answer to a request that ``renews`` a licence a new one would not
better: the device keeps it, nothing is charged."""

USAGE_DROP_REASONS = ("unknown_licence", "unknown_device", "counter_behind")
"""Reasons of usage report denials that no resend can change: the server does not know the
licence (or the device), or already holds a higher counter for it; the device drops the
report instead of sending it at every renewal and close."""


def canonical_bytes(body: Any) -> bytes:
    """The bytes that are signed: sorted keys, no whitespace, UTF-8."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def new_nonce() -> str:
    return secrets.token_hex(16)


def now() -> int:
    return int(time.time())


def sign(body: Any, key: Ed25519PrivateKey) -> str:
    """Base64 Ed25519 signature of the canonical bytes of ``body``."""
    return b64(key.sign(canonical_bytes(body)))


def verify(body: Any, signature: str, public_key: Ed25519PublicKey) -> bool:
    """True when ``signature`` is a valid signature of ``body`` by ``public_key`` (False, too,
    for a body nested too deeply to serialise)."""
    try:
        public_key.verify(unb64(signature), canonical_bytes(body))
    except (InvalidSignature, ValueError, RecursionError):
        return False
    return True


def answer_message(path: str, status: int, request: bytes, answer: Any) -> dict[str, Any]:
    """What the server signs in its answer to a device request (header :data:`SIGNATURE_HEADER`):
    the request's ``path``, the answer's ``status`` and JSON body, and the SHA-256 of the
    ``request``'s canonical bytes, which binds the answer to that very request."""
    return {
        "path": path,
        "status": status,
        "request_sha256": hashlib.sha256(request).hexdigest(),
        "answer": answer,
    }
