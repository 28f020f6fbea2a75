"""Pydantic request/response schemas (separate Create / Update / Public shapes per resource)."""

from __future__ import annotations

import binascii
import datetime as dt
import re
import unicodedata
from typing import Annotated, Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, field_validator

from skruntime.config import NAME_RE
from skruntime.licensing.protocol import unb64

NONCE_RE = re.compile(r"^[0-9a-f]{32}$")
INT64_MAX = 2**63 - 1
"""The largest integer both databases store (BIGINT); larger ones are refused with a 422."""
MAX_LICENCE_SECONDS = 100 * 365 * 86400
"""Licence durations above 100 years are refused: an expiry must fit a datetime."""
INT32_MAX = 2**31 - 1
"""The largest value of an INTEGER column (admin token ids, ``max_devices``)."""
ID = Field(ge=0, le=INT64_MAX, strict=True)
MAX_NAME = 200
"""The longest application, customer, model name or device id (the columns' length)."""
MAX_MODELS = 1000
"""The most model names an application lists or a licence request asks for."""
MAX_SUPERSEDED = 16
"""The most earlier requests a licence request ``supersedes`` (the runtime names at most 8)."""
DEVICE_ID_PATTERN = r"^[!-~]+$"
"""Device ids are printable ASCII without spaces (the runtime's are uuid4 hex)."""
ModelName = Annotated[str, Field(min_length=1, max_length=MAX_NAME)]
Nonce = Annotated[str, Field(pattern=NONCE_RE.pattern)]


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored as a name, or None: PostgreSQL refuses NUL and lone
    surrogates (a 500 otherwise), and no other control character belongs in a name."""
    bad = sorted({c for c in value if unicodedata.category(c) in ("Cc", "Cs")})
    if bad:
        return f"must not contain control characters, but got {', '.join(map(repr, bad))}"
    return None


def refused_if(problem: str | None, value: str) -> str:
    """``value``, or the validation error ``problem`` names."""
    if problem:
        raise ValueError(problem)
    return value


def segment_problem(value: str) -> str | None:
    """Why ``value`` cannot name a resource in an admin URL path (``/devices/{id}``,
    ``/applications/{name}``), or None: it must come back whole from a percent-encoded path
    segment, and ``%2F`` is decoded to ``/`` before routing, ``.`` and ``..`` are dot-segments
    that clients remove."""
    if "/" in value:
        return f"must not contain '/' (admin URL paths name it), but got {value!r}"
    if value in (".", ".."):
        return f"must not be '.' or '..' (admin URL paths name it), but got {value!r}"
    return text_problem(value)


def application_name_problem(value: str) -> str | None:
    """Why ``value`` cannot name an application, or None (the one check of the API and CLI):
    it must be a name a configuration file can hold (``skruntime.config.NAME_RE``), or no
    device could ever ask for it; such a name is also safe in a URL path."""
    if NAME_RE.fullmatch(value) and value not in (".", ".."):
        return None
    shown = repr(value) if len(value) <= MAX_NAME else f"{len(value)} characters"
    return (
        "must be an application name a configuration can hold: 1 to 128 letters, digits, '_', "
        f"'.' or '-', not starting with '.' or '-', but got {shown}"
    )


def _raw_key(value: str) -> str:
    try:
        raw = unb64(value)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise ValueError("must be base64 of a raw 32-byte public key") from None
    if len(raw) != 32:
        raise ValueError(f"must be a raw 32-byte public key, but got {len(raw)} bytes")
    return value


def application_public_key(value: str) -> str:
    """An application's configuration key as the admin gives it (``skprotect export-kek``'s
    line, surrounding blanks allowed), normalised: base64 of 32 raw Ed25519 bytes."""
    return _raw_key(value.strip())


def aware_datetime(value: dt.datetime | None) -> dt.datetime | None:
    """``value`` if it has a timezone and fits a datetime once converted to UTC (it is stored
    in UTC: 9999-12-31T23:00-14:00 does not fit)."""
    if value is not None and value.tzinfo is None:
        raise ValueError("must include a timezone (e.g. 2026-06-30T00:00:00Z)")
    if value is not None:
        try:
            value.astimezone(dt.UTC)
        except OverflowError:
            raise ValueError(
                "must be from 0001-01-01 to 9999-12-31 once converted to UTC"
            ) from None
    return value


def _number(text: str) -> bool:
    """Whether ``text`` reads as a number, which pydantic takes as a Unix time, not ISO 8601."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def iso_text(value: object) -> object:
    """An admin's ``contract_end`` is ISO 8601 text (or null; a datetime from Python): a JSON
    number would be taken as Unix seconds, or milliseconds above 2e10, so a year (``2030``)
    became 1970-01-01T00:33:50Z; and so would a number in text (``"2030"``)."""
    if value is not None and (
        not isinstance(value, str | dt.datetime) or (isinstance(value, str) and _number(value))
    ):
        raise ValueError(
            'must be ISO 8601 text with a timezone (e.g. "2026-06-30T00:00:00Z"), but got '
            f"{value!r}"
        )
    return value


class DeviceMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device_id: str = Field(min_length=1, max_length=MAX_NAME, pattern=DEVICE_ID_PATTERN)
    #: Integers of a device message are JSON integers (strict): ``true`` is not 1, nor "42" 42.
    timestamp: int = Field(ge=0, le=INT64_MAX, strict=True)
    nonce: str

    @field_validator("device_id")
    @classmethod
    def _device_id(cls, value: str) -> str:
        """The admin API names the device in its URL path (``/v1/admin/devices/{id}``)."""
        return refused_if(segment_problem(value), value)

    @field_validator("nonce")
    @classmethod
    def _nonce(cls, value: str) -> str:
        if not NONCE_RE.fullmatch(value):  # match: "$" let a trailing newline through
            raise ValueError("must be 32 lowercase hex characters")
        return value


def _exchange_key(value: str) -> str:
    """A raw X25519 key that a key exchange accepts: the all-zero and other low-order points
    give no shared secret, and the KEK could not be wrapped to them."""
    _raw_key(value)
    try:
        X25519PrivateKey.generate().exchange(X25519PublicKey.from_public_bytes(unb64(value)))
    except ValueError:
        raise ValueError("is a low-order X25519 point, which no key exchange accepts") from None
    return value


class SignedConfiguration(BaseModel):
    """The configuration file's signed payload and its signature, as the protector wrote them:
    proof, checked against the application's registered public key, that the application's
    vendor licensed these models to the customer the request names."""

    model_config = ConfigDict(extra="forbid")

    payload: dict[str, Any]
    signature: str = Field(min_length=1, max_length=200)


class LicenceRequestIn(DeviceMessage):
    customer_id: int = Field(ge=0, le=INT64_MAX, strict=True)
    application: str = Field(min_length=1, max_length=MAX_NAME)
    #: Bounded: a denial names the unknown ones, and the audit log keeps the denial. At least
    #: one: a licence for no model runs nothing, yet was granted (charged, a device registered).
    models: list[ModelName] = Field(min_length=1, max_length=MAX_MODELS)
    config_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    signing_public_key: str
    exchange_public_key: str
    #: Optional extension: the allowance the device asks for (capped by the remaining quota).
    requested_inferences: int | None = Field(default=None, ge=1, le=INT64_MAX, strict=True)
    #: Required by applications with a registered public key (``customer_not_proven``).
    configuration: SignedConfiguration | None = None
    #: The licence this request renews: kept (``decision: keep``, nothing charged) when a
    #: renewal would expire at the same time and grant no other model.
    renews: str | None = Field(default=None, min_length=1, max_length=36)
    #: The nonces of this device's earlier requests whose answers were lost and that are too old
    #: to send again: one granted, or answered with a licence granted to one it superseded, is
    #: answered with that licence, uncharged (``decision.resendable``).
    supersedes: list[Nonce] = Field(default_factory=list, max_length=MAX_SUPERSEDED)

    @field_validator("application", "renews")
    @classmethod
    def _text(cls, value: str | None) -> str | None:
        """Stored or looked up: no NUL or other control character."""
        return None if value is None else refused_if(text_problem(value), value)

    @field_validator("models")
    @classmethod
    def _models(cls, value: list[str]) -> list[str]:
        """Stored in the licence and named in denials: no NUL or other control character."""
        for model in value:
            refused_if(text_problem(model), model)
        return value

    @field_validator("signing_public_key")
    @classmethod
    def _keys(cls, value: str) -> str:
        return _raw_key(value)

    @field_validator("exchange_public_key")
    @classmethod
    def _exchange(cls, value: str) -> str:
        return _exchange_key(value)


class UsageReportIn(DeviceMessage):
    licence_id: str = Field(min_length=1, max_length=36)
    report_id: str = Field(min_length=1, max_length=100)
    counter: int = Field(ge=0, le=INT64_MAX, strict=True)

    @field_validator("licence_id", "report_id")
    @classmethod
    def _ids(cls, value: str) -> str:
        """Looked up and stored: a NUL, which PostgreSQL cannot bind, would be a 500 there (and
        stored as given by SQLite); no other control character belongs in an id."""
        return refused_if(text_problem(value), value)


class UsageReceipt(BaseModel):
    accepted: bool
    duplicate: bool
    report_id: str
    licence_id: str
    counter: int


class Denial(BaseModel):
    decision: str = "deny"
    reason: str
    detail: str


class ApplicationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        description="1 to 200 characters, not blank, no '/' or control characters (checked by "
        "crud, as for the CLI)"
    )
    kek: str | None = Field(default=None, description="base64 KEK (`skprotect export-kek`)")
    models: list[str] | None = Field(
        default=None,
        description="model names licences may name (null or absent: any model; never empty)",
    )
    public_key: str | None = Field(
        default=None,
        description="base64 Ed25519 key that signs the application's configuration files "
        "(`skprotect export-kek` prints it): licence requests must then carry a configuration "
        "signed by it for the customer they name",
    )

    @field_validator("public_key")
    @classmethod
    def _public_key(cls, value: str | None) -> str | None:
        return None if value is None else application_public_key(value)


class ApplicationKekImport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kek: str


class ApplicationPublicKeyImport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    public_key: str

    @field_validator("public_key")
    @classmethod
    def _public_key(cls, value: str) -> str:
        return application_public_key(value)


class ApplicationUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[str] | None = Field(
        default=None, description="model names licences may name (null: any model; never empty)"
    )


class ApplicationPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    has_kek: bool
    models: list[str] | None
    public_key: str | None
    created_at: dt.datetime
    #: What the admin should know of the change just made (a KEK replacing another one,
    #: ``crud.kek_warning``); None otherwise.
    warning: str | None = None


class CustomerCreate(BaseModel):
    """A new customer (admin API). Integers are JSON integers (strict), as in device messages,
    here and in the other admin bodies: ``true`` is not a quota of 1, nor ``"42"`` customer 42."""

    model_config = ConfigDict(extra="forbid")

    id: int = ID
    name: str = Field(min_length=1, max_length=200)
    contract_end: dt.datetime | None = None
    inference_quota: int | None = Field(default=None, ge=0, le=INT64_MAX, strict=True)
    max_devices: int = Field(default=1, ge=1, le=INT32_MAX, strict=True)
    default_licence_seconds: int = Field(
        default=30 * 86400, ge=1, le=MAX_LICENCE_SECONDS, strict=True
    )

    @field_validator("contract_end", mode="before")
    @classmethod
    def _iso(cls, value: object) -> object:
        return iso_text(value)

    @field_validator("contract_end")
    @classmethod
    def _aware(cls, value: dt.datetime | None) -> dt.datetime | None:
        return aware_datetime(value)


class CustomerUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=200)
    contract_end: dt.datetime | None = None
    inference_quota: int | None = Field(default=None, ge=0, le=INT64_MAX, strict=True)
    max_devices: int | None = Field(default=None, ge=1, le=INT32_MAX, strict=True)
    default_licence_seconds: int | None = Field(
        default=None, ge=1, le=MAX_LICENCE_SECONDS, strict=True
    )

    @field_validator("contract_end", mode="before")
    @classmethod
    def _iso(cls, value: object) -> object:
        return iso_text(value)

    @field_validator("contract_end")
    @classmethod
    def _aware(cls, value: dt.datetime | None) -> dt.datetime | None:
        return aware_datetime(value)

    @field_validator("name", "max_devices", "default_licence_seconds")
    @classmethod
    def _not_null(cls, value: object) -> object:
        """Only ``contract_end`` and ``inference_quota`` can be cleared (null = none)."""
        if value is None:
            raise ValueError("cannot be null: leave the field out to keep its value")
        return value


class CustomerPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    contract_end: dt.datetime | None
    inference_quota: int | None
    inferences_granted: int
    max_devices: int
    default_licence_seconds: int
    created_at: dt.datetime


class CustomerUpdated(CustomerPublic):
    #: Set when the contract end set is not in the future, a quota set is not above the
    #: inferences granted, or a quota was set while licences issued without one are still valid
    #: (``crud.customer_warning``).
    warning: str | None = None


class DeviceUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: str | None = Field(default=None, pattern=r"^(active|revoked)$")
    duration_override_seconds: int | None = Field(
        default=None, ge=1, le=MAX_LICENCE_SECONDS, strict=True
    )


class DevicePublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    customer_id: int
    signing_public_key: str
    exchange_public_key: str
    duration_override_seconds: int | None
    status: str
    created_at: dt.datetime


class LicencePublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    device_id: str
    customer_id: int
    application_id: int
    models: list[str]
    issued_at: dt.datetime
    expires_at: dt.datetime
    inferences: int | None
    request_nonce: str


class UsageReportPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    device_id: str
    report_id: str
    licence_id: str
    counter: int
    received_at: dt.datetime


class TokenPublic(BaseModel):
    """An admin token as listed: never the token, only the start of its SHA-256, which is also
    the ``token:<fingerprint>`` actor of its audit entries."""

    id: int
    role: str
    created_at: dt.datetime
    #: None: valid until revoked.
    expires_at: dt.datetime | None
    fingerprint: str


class AuditPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    at: dt.datetime
    actor: str
    action: str
    target: str
    detail: dict[str, Any]
