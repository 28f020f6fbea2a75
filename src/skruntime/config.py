"""The application configuration file: which protected models exist, and where their files are.

The protector writes it, the runtime reads it. One file per application and deployment platform,
in ``outputs/<application>/``: ``skconfig.json`` for the TXT platform, ``skrpl`` for LINUX
(:data:`CONFIG_FILENAMES`).

File format (``"format": "skprotect-config"``)
-----------------------------------------------

UTF-8 JSON, at most :data:`MAX_CONFIG_BYTES` (16 MiB; larger files are refused before parsing).
The top level is an object with exactly four fields::

    {
      "format":     "skprotect-config",
      "payload":    { ... },          # the content below
      "signature":  "<base64>",       # Ed25519 signature, 64 bytes, standard base64
      "public_key": "<base64>"        # raw Ed25519 public key, 32 bytes, standard base64
    }

The signature covers the *canonical bytes* of ``payload``:
``json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`` encoded as
UTF-8. The payload holds only objects, arrays, strings and integers (no floats), so every reader
re-derives the same bytes from the parsed value. Whitespace and key order of the file itself do
not matter. Duplicate object keys, ``NaN``/``Infinity`` and unknown fields are rejected.

The embedded ``public_key`` only proves that the file is intact. A runtime that must know *who*
wrote the file pins the application's public key (``load_config(path, public_key=...)``).

Payload fields (``platform_version`` selects which are present)::

    platform_version   int      0, 1 or 2 (SUPPORTED_PLATFORM_VERSIONS)
    platform           str      "TXT" or "LINUX"
    application        str      application name (a safe file name)
    skprotect_version  str      version of the protector that wrote the file
    models             object   model name -> model entry
    customer           object   {"id": int >= 1, "name": str}         (version 2 only, required)

    model entry:
      key_epoch        int >= 0   bumps when the model's keys are re-drawn
      inputs           array of {"name": str, "shape": [int >= 0, ...], "dtype": str,
                                 "dynamic_dims": {"<axis>": "<dim name>", ...}}
                       (dynamic_dims may be omitted when empty; writers always write it)
                       (the data inputs, in order; the key is the extra last input)
      outputs          array of {"name": str}
      key              {"name": str, "length": int >= 0}   the key input's name and length
      formats          object  format slug -> format entry; slugs: onnx, torchscript_cpu,
                               torchscript_gpu, inductor_cpu, inductor_gpu

    format entry:
      group            str   "onnx", "cpu" or "gpu" (must match the slug)
      file             str   protected model file, relative to the configuration's folder
      key_files        array of str, relative to the configuration's folder
      sha256           str   64 lower-case hex digits of the model file   (version >= 1 only)

Relative paths use ``/``, never start with ``/``, and contain no ``.``, ``..`` or empty parts,
backslashes or colons, so a configuration can never point outside its own folder. Model names
and the application name match ``[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}``.

Versions: 0 = models and files; 1 = + SHA-256 of every protected model file (the runtime checks
it); 2 = + the customer, for licensing. A reader refuses versions it does not know, with the
list of versions it supports.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import hashlib
import hmac
import json
import os
import re
import shlex
import stat
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .errors import ConfigurationError
from .files import NotRegularFileError, open_regular

CONFIG_FORMAT = "skprotect-config"
CONFIG_FILENAMES: dict[str, str] = {"TXT": "skconfig.json", "LINUX": "skrpl"}
PLATFORMS = ("TXT", "LINUX")
SUPPORTED_PLATFORM_VERSIONS = (0, 1, 2)
LATEST_PLATFORM_VERSION = max(SUPPORTED_PLATFORM_VERSIONS)
MAX_CONFIG_BYTES = 16 * 1024 * 1024

#: format slug -> format group
FORMAT_GROUPS: dict[str, str] = {
    "onnx": "onnx",
    "torchscript_cpu": "cpu",
    "inductor_cpu": "cpu",
    "torchscript_gpu": "gpu",
    "inductor_gpu": "gpu",
}
DTYPES = (
    "bool",
    "uint8",
    "int8",
    "int16",
    "int32",
    "int64",
    "float16",
    "bfloat16",
    "float32",
    "float64",
    "uint16",
    "uint32",
    "uint64",
    "complex64",
    "complex128",
)

NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_AXIS_RE = re.compile(r"0|[1-9][0-9]{0,2}")
_MAX_TEXT = 1024
_MAX_NDIM = 64

_TOP_FIELDS = ("format", "payload", "signature", "public_key")


# --------------------------------------------------------------------------- validation helpers


def _type_name(value: object) -> str:
    return type(value).__name__


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _int(value: object, where: str, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(f"{where} must be an integer, but got {_type_name(value)}.")
    if value < minimum:
        raise ConfigurationError(f"{where} must be >= {minimum}, but got {value}.")
    return value


def _text(value: object, where: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise ConfigurationError(f"{where} must be a string, but got {_type_name(value)}.")
    if not value and not allow_empty:
        raise ConfigurationError(f"{where} must not be empty.")
    if len(value) > _MAX_TEXT:
        raise ConfigurationError(
            f"{where} must be at most {_MAX_TEXT} characters, but got {len(value)}."
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigurationError(
            f"{where} must be valid Unicode text, but got {_short(value)}."
        ) from None
    return value


def _name(value: object, where: str) -> str:
    value = _text(value, where)
    if not NAME_RE.fullmatch(value):
        raise ConfigurationError(
            f"{where} must be 1-128 characters of letters, digits, '_', '.' or '-' (not starting "
            f"with '.' or '-'), but got {_short(value)}."
        )
    return value


def _relpath(value: object, where: str) -> str:
    value = _text(value, where)
    parts = value.split("/")
    if (
        value.startswith("/")
        or "\\" in value
        or ":" in value
        or "\x00" in value
        or any(p in ("", ".", "..") for p in parts)
    ):
        raise ConfigurationError(
            f"{where} must be a relative '/'-separated path inside the configuration's folder "
            f"(no '..', '.', empty parts, backslashes or colons), but got {_short(value)}."
        )
    return str(PurePosixPath(value))


def _mapping(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{where} must be an object, but got {_type_name(value)}.")
    return value


def _sequence(value: object, where: str) -> list[Any]:
    if isinstance(value, str | bytes) or not isinstance(value, list | tuple):
        raise ConfigurationError(f"{where} must be an array, but got {_type_name(value)}.")
    return list(value)


def _fields(
    data: object, where: str, required: Iterable[str], optional: Iterable[str] = ()
) -> Mapping[str, Any]:
    data = _mapping(data, where)
    required, optional = tuple(required), tuple(optional)
    missing = [k for k in required if k not in data]
    if missing:
        raise ConfigurationError(f"{where} is missing the field(s) {', '.join(missing)}.")
    unknown = sorted(str(k) for k in data if k not in required and k not in optional)
    if unknown:
        raise ConfigurationError(
            f"{where} has unknown field(s) {', '.join(unknown)}; expected only "
            f"{', '.join(required + optional)}."
        )
    return data


# --------------------------------------------------------------------------- dataclasses


@dataclass(frozen=True)
class InputSpec:
    """One data input of a model: name, example shape, dtype and its dynamic axes."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    dynamic_dims: Mapping[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _text(self.name, "input name")
        where = f"input {self.name!r}"
        shape = tuple(_sequence(self.shape, f"{where} shape"))
        if len(shape) > _MAX_NDIM:
            raise ConfigurationError(
                f"{where} shape must have at most {_MAX_NDIM} axes, but got {len(shape)}."
            )
        for axis, size in enumerate(shape):
            _int(size, f"{where} shape[{axis}]")
        object.__setattr__(self, "shape", shape)
        if self.dtype not in DTYPES:
            raise ConfigurationError(
                f"{where} dtype must be one of {', '.join(DTYPES)}, but got {_short(self.dtype)}."
            )
        dims: dict[int, str] = {}
        for axis, dim in _mapping(self.dynamic_dims, f"{where} dynamic_dims").items():
            if isinstance(axis, str) and _AXIS_RE.fullmatch(axis):
                axis = int(axis)
            if isinstance(axis, bool) or not isinstance(axis, int) or not 0 <= axis < len(shape):
                raise ConfigurationError(
                    f"{where} dynamic_dims axis must be an axis of its {len(shape)}-d shape, "
                    f"but got {_short(axis)}."
                )
            dims[axis] = _text(dim, f"{where} dynamic_dims[{axis}]")
        object.__setattr__(self, "dynamic_dims", dict(sorted(dims.items())))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "dynamic_dims": {str(a): d for a, d in self.dynamic_dims.items()},
        }

    @classmethod
    def from_dict(cls, data: object, where: str = "input") -> InputSpec:
        d = _fields(data, where, ("name", "shape", "dtype"), ("dynamic_dims",))
        dims = _mapping(d.get("dynamic_dims", {}), f"{where} dynamic_dims")
        try:
            return cls(d["name"], d["shape"], d["dtype"], dims)
        except ConfigurationError as e:
            raise ConfigurationError(f"{where}: {e}") from None


@dataclass(frozen=True)
class OutputSpec:
    """One output of a model."""

    name: str

    def __post_init__(self) -> None:
        _text(self.name, "output name")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name}

    @classmethod
    def from_dict(cls, data: object, where: str = "output") -> OutputSpec:
        return cls(_fields(data, where, ("name",))["name"])


@dataclass(frozen=True)
class KeyInput:
    """The key input of a model (always its last input): name and key-vector length."""

    name: str
    length: int

    def __post_init__(self) -> None:
        _text(self.name, "key name")
        _int(self.length, "key length")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "length": self.length}

    @classmethod
    def from_dict(cls, data: object, where: str = "key") -> KeyInput:
        d = _fields(data, where, ("name", "length"))
        return cls(d["name"], d["length"])


@dataclass
class FormatEntry:
    """One exported format of a model: its group, file, key files and (version >= 1) SHA-256.

    Mutable so that the protector can fill ``key_files`` once the keys are written; a
    :class:`ModelEntry` keeps its own validated copy, so later changes do not leak into it.
    """

    group: str
    file: str
    key_files: Sequence[str] = ()
    sha256: str | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, where: str = "format") -> FormatEntry:
        """Check every field (raises :class:`ConfigurationError` naming it); returns ``self``."""
        if self.group not in ("onnx", "cpu", "gpu"):
            raise ConfigurationError(
                f"{where} group must be one of onnx, cpu, gpu, but got {_short(self.group)}."
            )
        self.file = _relpath(self.file, f"{where} file")
        self.key_files = tuple(
            _relpath(k, f"{where} key_files[{i}]")
            for i, k in enumerate(_sequence(self.key_files, f"{where} key_files"))
        )
        if self.sha256 is not None and (
            not isinstance(self.sha256, str) or not _SHA256_RE.fullmatch(self.sha256)
        ):
            raise ConfigurationError(
                f"{where} sha256 must be 64 lower-case hex digits, but got {_short(self.sha256)}."
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "group": self.group,
            "file": self.file,
            "key_files": list(self.key_files),
        }
        if self.sha256 is not None:
            d["sha256"] = self.sha256
        return d

    @classmethod
    def from_dict(cls, data: object, where: str = "format") -> FormatEntry:
        d = _fields(data, where, ("group", "file", "key_files"), ("sha256",))
        if "sha256" in d and d["sha256"] is None:
            raise ConfigurationError(f"{where} sha256 must be a string, but got None.")
        entry = cls.__new__(cls)
        entry.group, entry.file = d["group"], d["file"]
        entry.key_files, entry.sha256 = d["key_files"], d.get("sha256")
        return entry.validate(where)


@dataclass(frozen=True)
class ModelEntry:
    """One protected model: its inputs, outputs, key input and exported formats.

    The model's name is not a field: it is the key the entry is stored under in
    :attr:`Config.models`. ``inputs``, ``outputs``, ``key`` and ``formats`` accept the
    dataclasses or their JSON dicts.
    """

    key_epoch: int
    inputs: Sequence[InputSpec]
    outputs: Sequence[OutputSpec]
    key: KeyInput
    formats: Mapping[str, FormatEntry]

    def __post_init__(self) -> None:
        _int(self.key_epoch, "key_epoch")
        inputs = tuple(
            i if isinstance(i, InputSpec) else InputSpec.from_dict(i, f"inputs[{n}]")
            for n, i in enumerate(_sequence(self.inputs, "inputs"))
        )
        outputs = tuple(
            o if isinstance(o, OutputSpec) else OutputSpec.from_dict(o, f"outputs[{n}]")
            for n, o in enumerate(_sequence(self.outputs, "outputs"))
        )
        key = self.key if isinstance(self.key, KeyInput) else KeyInput.from_dict(self.key, "key")
        formats: dict[str, FormatEntry] = {}
        for slug, entry in _mapping(self.formats, "formats").items():
            if slug not in FORMAT_GROUPS:
                raise ConfigurationError(
                    f"format must be one of {', '.join(FORMAT_GROUPS)}, but got {_short(slug)}."
                )
            fwhere = f"format {slug!r}"
            if isinstance(entry, FormatEntry):  # a private, re-validated copy
                entry = FormatEntry.from_dict(
                    {"group": entry.group, "file": entry.file, "key_files": entry.key_files}
                    | ({"sha256": entry.sha256} if entry.sha256 is not None else {}),
                    fwhere,
                )
            else:
                entry = FormatEntry.from_dict(entry, fwhere)
            if entry.group != FORMAT_GROUPS[slug]:
                raise ConfigurationError(
                    f"{fwhere} group must be {FORMAT_GROUPS[slug]!r}, but got {entry.group!r}."
                )
            formats[slug] = entry
        if not formats:
            raise ConfigurationError("a model must have at least one format.")
        names = [i.name for i in inputs] + [key.name]
        if len(set(names)) != len(names):
            raise ConfigurationError(f"input names (key included) must be unique, but got {names}.")
        object.__setattr__(self, "inputs", inputs)
        object.__setattr__(self, "outputs", outputs)
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "formats", dict(sorted(formats.items())))

    def to_dict(self) -> dict[str, Any]:
        """The JSON value of this entry (the model's name is the key it is stored under)."""
        return {
            "key_epoch": self.key_epoch,
            "inputs": [i.to_dict() for i in self.inputs],
            "outputs": [o.to_dict() for o in self.outputs],
            "key": self.key.to_dict(),
            "formats": {s: f.to_dict() for s, f in self.formats.items()},
        }

    @classmethod
    def from_dict(cls, data: object, where: str = "model") -> ModelEntry:
        d = _fields(data, where, ("key_epoch", "inputs", "outputs", "key", "formats"))
        try:
            return cls(
                key_epoch=d["key_epoch"],
                inputs=tuple(
                    InputSpec.from_dict(i, f"inputs[{n}]")
                    for n, i in enumerate(_sequence(d["inputs"], "inputs"))
                ),
                outputs=tuple(
                    OutputSpec.from_dict(o, f"outputs[{n}]")
                    for n, o in enumerate(_sequence(d["outputs"], "outputs"))
                ),
                key=KeyInput.from_dict(d["key"], "key"),
                formats=_mapping(d["formats"], "formats"),
            )
        except ConfigurationError as e:
            raise ConfigurationError(f"{where}: {e}") from None

    def with_sha256(self, hashes: Mapping[str, str | None]) -> ModelEntry:
        """A copy whose formats carry the given SHA-256 (slug -> hex, or None to drop it)."""
        formats = {
            slug: FormatEntry(f.group, f.file, f.key_files, hashes.get(slug, f.sha256))
            for slug, f in self.formats.items()
        }
        return ModelEntry(self.key_epoch, self.inputs, self.outputs, self.key, formats)


@dataclass(frozen=True, eq=False)
class CustomerEntry:
    """The customer a version-2 configuration is licensed to; equal to its JSON dict too."""

    id: int
    name: str = ""

    def __eq__(self, other: object) -> bool:
        if isinstance(other, CustomerEntry):
            return (self.id, self.name) == (other.id, other.name)
        if isinstance(other, Mapping):
            return dict(other) == self.to_dict()
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.id, self.name))

    def __post_init__(self) -> None:
        _int(self.id, "customer id", minimum=1)
        _text(self.name, "customer name", allow_empty=True)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name}

    @classmethod
    def from_dict(cls, data: object, where: str = "customer") -> CustomerEntry:
        d = _fields(data, where, ("id", "name"))
        return cls(d["id"], d["name"])


@dataclass(frozen=True)
class Config:
    """The payload of a configuration file, validated for its platform version."""

    platform_version: int
    platform: str
    application: str
    skprotect_version: str
    models: Mapping[str, ModelEntry] = field(default_factory=dict)
    customer: CustomerEntry | None = None

    def __post_init__(self) -> None:
        _int(self.platform_version, "platform_version")
        if self.platform_version not in SUPPORTED_PLATFORM_VERSIONS:
            raise ConfigurationError(_version_message(self.platform_version))
        if self.platform not in PLATFORMS:
            raise ConfigurationError(
                f"platform must be one of {', '.join(PLATFORMS)}, but got {_short(self.platform)}."
            )
        _name(self.application, "application")
        _text(self.skprotect_version, "skprotect_version")
        models: dict[str, ModelEntry] = {}
        for name, entry in _mapping(self.models, "models").items():
            _name(name, "model name")
            if not isinstance(entry, ModelEntry):
                entry = ModelEntry.from_dict(entry, f"model {name!r}")
            for slug, fmt in entry.formats.items():
                where = f"model {name!r} format {slug!r} sha256"
                if self.platform_version >= 1 and fmt.sha256 is None:
                    raise ConfigurationError(
                        f"{where} is required from platform version 1, but it is missing."
                    )
                if self.platform_version == 0 and fmt.sha256 is not None:
                    raise ConfigurationError(f"{where} must be absent in platform version 0.")
            models[name] = entry
        object.__setattr__(self, "models", dict(sorted(models.items())))
        customer = self.customer
        if customer is not None and not isinstance(customer, CustomerEntry):
            customer = CustomerEntry.from_dict(customer)
        if self.platform_version >= 2 and customer is None:
            raise ConfigurationError("customer is required from platform version 2, but missing.")
        if self.platform_version < 2 and customer is not None:
            raise ConfigurationError(
                f"customer requires platform version 2, but the version is {self.platform_version}."
            )
        object.__setattr__(self, "customer", customer)

    def to_dict(self) -> dict[str, Any]:
        """The JSON payload (the signed part of the file)."""
        d: dict[str, Any] = {
            "platform_version": self.platform_version,
            "platform": self.platform,
            "application": self.application,
            "skprotect_version": self.skprotect_version,
            "models": {n: m.to_dict() for n, m in self.models.items()},
        }
        if self.customer is not None:
            d["customer"] = self.customer.to_dict()
        return d

    @classmethod
    def from_dict(cls, data: object) -> Config:
        d = _fields(
            data,
            "payload",
            ("platform_version", "platform", "application", "skprotect_version", "models"),
            ("customer",),
        )
        models = {
            _name(name, "model name"): ModelEntry.from_dict(entry, f"model {name!r}")
            for name, entry in _mapping(d["models"], "models").items()
        }
        customer = CustomerEntry.from_dict(d["customer"]) if "customer" in d else None
        return cls(
            d["platform_version"],
            d["platform"],
            d["application"],
            d["skprotect_version"],
            models,
            customer,
        )


def _version_message(version: int) -> str:
    supported = ", ".join(str(v) for v in SUPPORTED_PLATFORM_VERSIONS)
    if version > LATEST_PLATFORM_VERSION:
        return (
            f"platform version {version} is newer than this skruntime supports "
            f"(supported: {supported}); upgrade skruntime, or re-protect with "
            f"platform_version <= {LATEST_PLATFORM_VERSION}."
        )
    return f"platform version {version} is unknown (supported: {supported})."


# --------------------------------------------------------------------------- reading and writing


def canonical_json(value: object) -> bytes:
    """The canonical UTF-8 bytes that are signed (and used as AAD): sorted keys, no spaces."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def public_key_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The raw 32-byte Ed25519 public key of a private or public key."""
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed")


def read_config_bytes(path: Path) -> bytes:
    """The configuration file's bytes, refused unread above :data:`MAX_CONFIG_BYTES` or when
    it is not a regular file (a FIFO would block, a device never end)."""
    try:
        with open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            data = f.read(MAX_CONFIG_BYTES + 1) if size <= MAX_CONFIG_BYTES else b""
    except FileNotFoundError:
        raise ConfigurationError(
            f"Configuration file {path} not found. Protect a model first (protect_new_model), "
            "or point the runtime at the folder that holds the configuration."
        ) from None
    except NotRegularFileError as e:
        raise ConfigurationError(
            f"Configuration file {e}: it cannot be read as a configuration. Replace it with the "
            "file skprotect wrote (copy it from the protector's outputs/ folder)."
        ) from None
    except OSError as e:
        raise ConfigurationError(
            f"Configuration file {path} cannot be read: {e.strerror or e}. "
            "Check that it is a readable file."
        ) from None
    if size > MAX_CONFIG_BYTES or len(data) > MAX_CONFIG_BYTES:
        raise ConfigurationError(
            f"Configuration file {path} is too large ({max(size, len(data))} bytes, the limit is "
            f"{MAX_CONFIG_BYTES}); it is not a skprotect configuration. Re-protect the models."
        )
    return data


def _b64(value: object, what: str, size: int, path: Path) -> bytes:
    if not isinstance(value, str):
        raise ConfigurationError(
            f"Configuration file {path}: {what} must be a base64 string, "
            f"but got {_type_name(value)}."
        )
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ConfigurationError(
            f"Configuration file {path}: {what} is not valid base64. The file is corrupted; "
            "restore it or re-protect the models."
        ) from None
    if len(raw) != size:
        raise ConfigurationError(
            f"Configuration file {path}: {what} must be {size} bytes, but got {len(raw)}. "
            "The file is corrupted; restore it or re-protect the models."
        )
    return raw


def load_config(
    path: str | os.PathLike[str], *, public_key: bytes | Ed25519PublicKey | None = None
) -> Config:
    """Read, verify and validate a configuration file.

    Args:
        path: the configuration file (``skconfig.json`` or ``skrpl``).
        public_key: the application's raw 32-byte Ed25519 public key. When given, a file signed
            by any other key is refused; when ``None``, the file's own key is used, which proves
            only that the file is intact.

    Raises:
        ConfigurationError: missing, too large, not JSON, unsigned, tampered, signed by another
            key, of an unknown or too new version, or with an invalid field (named in the message).

    >>> cfg = load_config("outputs/default_app/skconfig.json")  # doctest: +SKIP
    >>> sorted(cfg.models)  # doctest: +SKIP
    ['resnet18']
    """
    path = Path(path)
    return parse_config(read_config_bytes(path), path, public_key=public_key)


def parse_config(
    raw: bytes,
    path: str | os.PathLike[str],
    *,
    public_key: bytes | Ed25519PublicKey | None = None,
) -> Config:
    """Verify and validate a configuration file's bytes (read by :func:`read_config_bytes`).

    For callers that use the verified bytes themselves (the licence request sends them): read
    the file once, verify these bytes, and use the same bytes, never a second read that could
    see another file. ``path`` only names the file in messages. Raises what :func:`load_config`
    raises.
    """
    return parse_signed_config(raw, path, public_key=public_key)[0]


def parse_signed_config(
    raw: bytes,
    path: str | os.PathLike[str],
    *,
    public_key: bytes | Ed25519PublicKey | None = None,
) -> tuple[Config, dict[str, Any], bytes]:
    """:func:`parse_config`, the file's signed part as parsed (``{"payload": ...,
    "signature": ...}``, what a licence request carries) and the raw public key it is signed
    with (``public_key``, else the one it names), so that the bytes are parsed once."""
    path = Path(path)
    try:
        text = raw.decode("utf-8")
        doc = json.loads(
            text, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant
        )
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError and JSONDecodeError included
        reason = str(e)[:120] if not isinstance(e, RecursionError) else "nested too deeply"
        raise ConfigurationError(
            f"Configuration file {path} is not valid UTF-8 JSON ({reason}). "
            "The file is corrupted; restore it or re-protect the models."
        ) from None
    if not isinstance(doc, dict) or doc.get("format") != CONFIG_FORMAT:
        raise ConfigurationError(
            f"Configuration file {path} is not a skprotect configuration (expected "
            f'"format": "{CONFIG_FORMAT}"). Point the runtime at the file written by skprotect.'
        )
    missing = [k for k in _TOP_FIELDS if k not in doc]
    unknown = sorted(k for k in doc if k not in _TOP_FIELDS)
    if missing or unknown:
        raise ConfigurationError(
            f"Configuration file {path} must have exactly the fields {', '.join(_TOP_FIELDS)}; "
            f"missing: {', '.join(missing) or 'none'}, unknown: {', '.join(unknown) or 'none'}. "
            "Unsigned or hand-edited files are refused; re-protect the models."
        )
    payload = doc["payload"]
    if not isinstance(payload, dict):
        raise ConfigurationError(
            f"Configuration file {path}: payload must be an object, but got "
            f"{_type_name(payload)}. Re-protect the models."
        )
    key_raw = _b64(doc["public_key"], "public_key", 32, path)
    signature = _b64(doc["signature"], "signature", 64, path)
    if public_key is not None:
        if not isinstance(public_key, Ed25519PublicKey | bytes | bytearray) or (
            not isinstance(public_key, Ed25519PublicKey) and len(public_key) != 32
        ):
            size = (
                f"{len(public_key)} bytes"
                if isinstance(public_key, str | bytes | bytearray)
                else ""
            )
            raise ConfigurationError(
                f"public_key must be the application's raw 32-byte Ed25519 key (bytes) or an "
                f"Ed25519PublicKey, but got {type(public_key).__name__} {size}".rstrip()
                + ": a base64 text (as the configuration file stores it) must be decoded "
                "first, e.g. base64.b64decode(text)."
            )
        expected = (
            public_key_bytes(public_key)
            if isinstance(public_key, Ed25519PublicKey)
            else bytes(public_key)
        )
        if not hmac.compare_digest(expected, key_raw):
            raise ConfigurationError(
                f"Configuration file {path} is signed by a different key than this "
                "application's. It was not written by this application's protector; use the "
                "configuration shipped with the application, or re-protect the models."
            )
    try:
        Ed25519PublicKey.from_public_bytes(key_raw).verify(signature, canonical_json(payload))
    except (InvalidSignature, ValueError, RecursionError):
        raise ConfigurationError(
            f"Configuration file {path} has an invalid signature: it was modified after "
            "protection. Restore the original file or re-protect the models."
        ) from None
    version = payload.get("platform_version")
    if (
        isinstance(version, int)
        and not isinstance(version, bool)
        and version not in SUPPORTED_PLATFORM_VERSIONS
    ):
        raise ConfigurationError(f"Configuration file {path}: {_version_message(version)}")
    try:
        config = Config.from_dict(payload)
    except ConfigurationError as e:
        raise ConfigurationError(
            f"Configuration file {path} is invalid: {e} Re-protect the models with this "
            "skprotect version."
        ) from None
    return config, {"payload": payload, "signature": doc["signature"]}, key_raw


def unwritable_reason(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` cannot be written as a file (its folder missing or a file, a folder itself, no
    write permission), or None: for commands to refuse an output path before their work, not
    after."""
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        blocking = next((p for p in (folder, *folder.parents) if p.exists()), None)
        if blocking is not None and not blocking.is_dir():  # -o report.json/y.npy
            return f"{blocking} is a file, not a folder; pass a path in a folder"
        return f"its folder {folder} does not exist; create it or pass another path"
    if path.is_dir():
        return "it is a folder; pass a file name"
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        return "it is not writable; pass a path you can write to"
    return None


def atomic_write_bytes(
    path: str | os.PathLike[str],
    data: bytes,
    *,
    mode: int = 0o644,
    owner: tuple[int, int] | None = None,
) -> None:
    """Replace ``path`` with ``data`` atomically: a crash leaves the old file or the new one.

    Writes a temporary file in the same folder, fsyncs it, then ``os.replace``-s it over
    ``path`` and fsyncs the folder. On any error the temporary file is removed, the old file is
    untouched, and the ``OSError`` propagates. ``owner``: the user and group ids the file
    gets, as far as this process may give them (:func:`_give_owner`).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        try:
            if owner is not None:
                _give_owner(fd, *owner)
            os.chmod(tmp, mode)  # after the owner: a change of owner clears setgid
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def _give_owner(fd: int, uid: int, gid: int) -> None:
    """Give the file ``fd`` the user ``uid`` and group ``gid``: root may give both, another
    user only a group it belongs to; else the file stays the writer's. So it stays where ids
    cannot be given at all: Windows (no ``os.fchown``), a user namespace (a rootless
    container) where the old file's ids are unmapped (``EINVAL``: until 2026-12-07 the whole
    write failed), a file system without Unix owners."""
    if not hasattr(os, "fchown"):
        return
    for ids in ((uid, gid), (-1, gid)):
        try:
            os.fchown(fd, *ids)
        except PermissionError:
            continue
        except OSError:
            return
        return


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd``: ``os.write`` may write less (a disk filling up)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def fsync_dir(folder: Path) -> None:
    """Make the entries of ``folder`` (a file renamed or linked into it) durable."""
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def write_config(
    path: str | os.PathLike[str], config: Config, signing_key: Ed25519PrivateKey
) -> None:
    """Sign ``config`` with ``signing_key`` and write it to ``path`` atomically.

    The parent folder is created if needed. A crash or an ``OSError`` (full disk, permissions)
    never leaves a partial file: the previous file, if any, stays as it was. A new file gets
    mode 0644; a replaced one keeps its permissions, owner and group (:func:`_kept_attributes`).

    Raises:
        ConfigurationError: ``config`` is not a :class:`Config`, the file would exceed
            :data:`MAX_CONFIG_BYTES`, or the file cannot be written.
    """
    path = Path(path)
    if not isinstance(config, Config):
        raise ConfigurationError(f"config must be a Config, but got {_type_name(config)}.")
    if not isinstance(signing_key, Ed25519PrivateKey):
        raise ConfigurationError(
            f"signing_key must be an Ed25519PrivateKey, but got {_type_name(signing_key)}."
        )
    payload = config.to_dict()
    document = {
        "format": CONFIG_FORMAT,
        "payload": payload,
        "signature": base64.b64encode(signing_key.sign(canonical_json(payload))).decode("ascii"),
        "public_key": base64.b64encode(public_key_bytes(signing_key)).decode("ascii"),
    }
    data = (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigurationError(
            f"Configuration for {path} would be {len(data)} bytes, over the "
            f"{MAX_CONFIG_BYTES}-byte limit readers accept. Split the models across applications."
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        mode, owner = _kept_attributes(path)
        atomic_write_bytes(path, data, mode=mode, owner=owner)
    except OSError as e:
        fix = (  # root's rename over an immutable or append-only file, or into such a folder
            f"make {path} and {path.parent} writable again (an immutable or append-only "
            f"attribute, which `lsattr -d {shlex.quote(str(path))} "
            f"{shlex.quote(str(path.parent))}` shows as i or a, is lifted with `chattr -i -a`)"
            if e.errno == errno.EPERM
            else f"free disk space or fix the permissions of {path.parent}"
        )
        raise ConfigurationError(
            f"Could not write configuration file {path}: {e.strerror or e}. The previous file, "
            f"if any, is unchanged; {fix}, then retry."
        ) from e


def _kept_attributes(path: Path) -> tuple[int, tuple[int, int] | None]:
    """The permissions and the user and group ids of the configuration file ``path`` that a
    write replaces, 0644 and the writer's for a new one: a migration or a customer change
    rewrites the file, and a 0640 file (readable by the runtime's group only) must neither come
    back readable by every user nor, given to the writer's group, unreadable by the runtime.
    The setuid, setgid and sticky bits are not kept: a configuration is not run."""
    try:
        st = path.stat()
    except OSError:  # no file yet (or none that can be looked at: the write says why)
        return 0o644, None
    return stat.S_IMODE(st.st_mode) & 0o777, (st.st_uid, st.st_gid)


def sha256_file(path: str | os.PathLike[str], *, chunk_size: int = 1 << 20) -> str:
    """Lower-case hex SHA-256 of a file, read in chunks (raises ``OSError`` if unreadable, and
    :class:`~.files.NotRegularFileError`, an ``OSError``, for a FIFO, device or folder)."""
    digest = hashlib.sha256()
    with open_regular(path) as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()
