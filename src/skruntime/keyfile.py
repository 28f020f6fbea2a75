"""TXT-platform key files, the in-memory key, and per-session keys.

The key vector
--------------

One flat float32 vector, the model's last input, laid out as described by its *spec*
``{"length": L, "perm_sizes": [n1, n2, ...], "scale_sizes": [s1, s2, ...]}``::

    [ perm slot 1 (n1 indices) | perm slot 2 | ... | u (sum s_i) | v (sum s_i) ]

with ``L = sum(perm_sizes) + 2 * sum(scale_sizes)``. The graph reduces every index modulo its
slot size and multiplies ``u * v``, so an index ``p`` may be stored as ``p + n*t`` and a scale
pair as ``(u * 2**a, v * 2**-a)``: the outputs are bitwise identical. The *canonical* key
(:meth:`KeyMaterial.static_key`) has indices in ``[0, n)``, ``u`` = the scales and ``v`` = 1.

Files (TXT platform): exactly two per (model, format group), in the group's folder
------------------------------------------------------------------------------------

``key_vector_inv_<model>.txt``: the key vector (or share A of it), one float32 per line written
as ``str(numpy.float32(x))`` (shortest text that round-trips exactly), ``\\n`` after every line,
UTF-8/ASCII. With ``test_key=True`` it is the canonical key and can be fed as-is as the model's
last input.

``key_params_<model>.json``: UTF-8 JSON object::

    format          "skprotect-key-params"
    version         1
    model           str, the model name
    static          bool: true when the .txt holds the canonical key itself (test_key=True)
    spec            {"length": int, "perm_sizes": [int], "scale_sizes": [int]}
    txt_sha256      hex SHA-256 of the .txt's values as little-endian float32 bytes; binds the
                    two files together (a stale or swapped .txt is refused)
    model_sha256    (optional) [hex SHA-256], the model files the pair unlocks; the runtime
                    refuses the pair for any other model file (key files left from another
                    protection run), and accepts files written before this field existed
    commitment_nonce  (optional) 64 hex digits, random: the secret half of the key commitment
                    that the model file records (:func:`key_commitment`)
    params_sha256   (optional) hex SHA-256 of the canonical JSON (sorted keys, no spaces) of
                    every other field: an edited or corrupted JSON (a changed share B would
                    otherwise combine into a wrong key and wrong outputs) is refused; files
                    written before this field existed are accepted if they hold only the
                    fields listed here
    perm_offsets    (static=false only) [int], one per index: share B of the permutations
    u_exponents     (static=false only) [int], one per scale
    v_exponents     (static=false only) [int], one per scale

With ``static=false`` the key is split in two shares so that neither file alone is a valid key:
the .txt holds ``(p + r) mod n`` for every index ``p`` and ``u * 2**a``, ``v * 2**b`` for the
scale factors; the JSON holds ``r`` (uniform in ``[0, n)``), ``a`` and ``b`` (integers in
``[-16, 16]``). Honest limits: the .txt alone hides the permutations (a one-time pad modulo
``n``), but reveals each scale up to a power of two. Both files together are the key: TXT is the
plaintext platform.

The key commitment
------------------

``params_sha256`` is a plain hash: anyone who can write the folder can edit share B (the key
then combines into another valid key, giving wrong outputs without an error) and recompute it.
So the protector also records :func:`key_commitment` of the key in the model file (the key
input's ``"key_commitment"`` in its ``skprotect.inputs`` record), whose SHA-256 the signed
configuration covers; the runtime refuses TXT key files that do not combine into that key
(:func:`check_key_commitment`). The commitment hashes the canonical key with the 256-bit
``commitment_nonce`` kept in the key-params file: the model file alone (also shipped with
LINUX's encrypted keys) reveals nothing to test key guesses against. A model file without a
commitment (protected before it was recorded) loads as before.

Size caps: a key has at most :data:`MAX_KEY_LENGTH` entries; larger files are refused unread.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .config import NAME_RE, atomic_write_bytes, canonical_json
from .errors import KeyFileError, KeyUnavailableError
from .files import KEY_FILE_MODE, NotRegularFileError, new_file_mode, open_regular

if TYPE_CHECKING:
    from .keysource import KeyUnlock

KEY_PARAMS_FORMAT = "skprotect-key-params"
KEY_PARAMS_VERSION = 1
#: Longest key accepted (entries); indices must also stay exact in float32 (< 2**24).
MAX_KEY_LENGTH = 1 << 24
_FLOAT32_EXACT = 1 << 24
_MAX_TXT_BYTES = MAX_KEY_LENGTH * 48
_MAX_JSON_BYTES = MAX_KEY_LENGTH * 24 + (1 << 20)
_SHARE_EXPONENT = 16
#: Every field a key-params file may hold (see the module docstring).
_PARAMS_FIELDS = frozenset(
    {
        "format",
        "version",
        "model",
        "static",
        "spec",
        "txt_sha256",
        "model_sha256",
        "params_sha256",
        "perm_offsets",
        "u_exponents",
        "v_exponents",
    }
)
_SESSION_EXPONENT = 8
_SESSION_MAX_T = 63


def key_txt_filename(model_name: str) -> str:
    """``key_vector_inv_<model>.txt``."""
    return f"key_vector_inv_{_check_model_name(model_name)}.txt"


def key_params_filename(model_name: str) -> str:
    """``key_params_<model>.json``."""
    return f"key_params_{_check_model_name(model_name)}.json"


def _check_model_name(name: object) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ValueError(
            "model name must be 1-128 characters of letters, digits, '_', '.' or '-' (not "
            f"starting with '.' or '-'), but got {name!r}."
        )
    return name


def _int_list(value: object, what: str) -> list[int]:
    # type() is exact: bool (an int subclass) and floats are refused; set(map()) runs in C
    if not isinstance(value, list) or not set(map(type, value)) <= {int}:
        raise ValueError(f"{what} must be a list of integers")
    return list(value)


def validate_spec(spec: object) -> dict[str, Any]:
    """Check a key spec and return a normalised copy (raises ``ValueError`` naming the field)."""
    if not isinstance(spec, dict):
        raise ValueError(f"spec must be an object, but got {type(spec).__name__}")
    unknown = sorted(set(spec) - {"length", "perm_sizes", "scale_sizes"})
    missing = sorted({"length", "perm_sizes", "scale_sizes"} - set(spec))
    if unknown or missing:
        raise ValueError(
            f"spec must have exactly length, perm_sizes, scale_sizes (missing: "
            f"{', '.join(missing) or 'none'}, unknown: {', '.join(map(str, unknown)) or 'none'})"
        )
    perm_sizes = _int_list(spec["perm_sizes"], "spec perm_sizes")
    scale_sizes = _int_list(spec["scale_sizes"], "spec scale_sizes")
    length = spec["length"]
    if isinstance(length, bool) or not isinstance(length, int):
        raise ValueError("spec length must be an integer")
    if any(n < 0 or n > _FLOAT32_EXACT for n in perm_sizes):
        raise ValueError(f"spec perm_sizes must each be in [0, {_FLOAT32_EXACT}]")
    if any(n < 0 for n in scale_sizes):
        raise ValueError("spec scale_sizes must be >= 0")
    expected = sum(perm_sizes) + 2 * sum(scale_sizes)
    if length != expected:
        raise ValueError(
            f"spec length must be sum(perm_sizes) + 2*sum(scale_sizes) = {expected}, "
            f"but got {length}"
        )
    if length > MAX_KEY_LENGTH:
        raise ValueError(f"spec length must be at most {MAX_KEY_LENGTH}, but got {length}")
    return {"length": length, "perm_sizes": perm_sizes, "scale_sizes": scale_sizes}


def _moduli(spec: dict[str, Any]) -> np.ndarray:
    sizes = np.asarray(spec["perm_sizes"], dtype=np.int64)
    return np.repeat(sizes, sizes)


def _canonical(key: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    """Canonical form of a valid key (indices in [0, n), u = u*v, v = 1); ValueError if invalid."""
    key = np.asarray(key)
    if key.ndim != 1 or key.shape[0] != spec["length"]:
        raise ValueError(f"the key must have {spec['length']} values, but has {key.size}")
    key = key.astype(np.float32, copy=True)
    if not np.all(np.isfinite(key)):
        raise ValueError("the key holds NaN or infinite values")
    n_perm = sum(spec["perm_sizes"])
    n_scale = sum(spec["scale_sizes"])
    idx = key[:n_perm]
    if not np.all(idx == np.round(idx)):
        raise ValueError("the key's permutation part holds non-integer values")
    if np.any(idx < 0) or np.any(idx >= _FLOAT32_EXACT):
        raise ValueError(f"the key's permutation part must be in [0, {_FLOAT32_EXACT})")
    moduli = _moduli(spec)
    reduced = np.mod(idx.astype(np.int64), moduli)
    start = 0
    for slot, n in enumerate(spec["perm_sizes"]):
        part = reduced[start : start + n]
        if not np.array_equal(np.sort(part), np.arange(n)):
            raise ValueError(f"permutation slot {slot} is not a permutation of 0..{n - 1}")
        start += n
    scales = key[n_perm : n_perm + n_scale] * key[n_perm + n_scale :]
    if not np.all(np.isfinite(scales)) or np.any(scales == 0):
        raise ValueError("the key's scales (u*v) must be finite and non-zero")
    out = np.empty(spec["length"], dtype=np.float32)
    out[:n_perm] = reduced.astype(np.float32)
    out[n_perm : n_perm + n_scale] = scales
    out[n_perm + n_scale :] = 1.0
    return out


def _split_pow2(x: np.ndarray, exponents: np.ndarray) -> np.ndarray:
    """Exponents where ``x * 2**e`` stays exact and normal in float32, else 0."""
    with np.errstate(over="ignore", under="ignore"):
        scaled = np.ldexp(x, exponents).astype(np.float32)
        back = np.ldexp(scaled, -exponents).astype(np.float32)
    tiny = np.finfo(np.float32).tiny
    ok = (
        np.isfinite(scaled) & (np.abs(scaled) >= tiny) & (back.view(np.uint32) == x.view(np.uint32))
    )
    return np.where(ok, exponents, 0)


class KeyMaterial:
    """A model's key, held in canonical form. Never printed: ``repr`` shows only its shape.

    Build it with :func:`read_txt_keys` or :func:`skruntime.mev.read_mev`; feed
    :func:`session_key` (or, for tests, :meth:`static_key`) to the model as its last input.
    """

    __slots__ = ("_key", "_spec", "nonce", "source")

    def __init__(
        self, key: np.ndarray, spec: dict[str, Any], *, source: str = "", nonce: str | None = None
    ) -> None:
        """``nonce``: the key-params file's ``commitment_nonce`` (TXT key files that have one)."""
        try:
            self._spec = validate_spec(spec)
            self._key = _canonical(key, self._spec)
        except ValueError as e:
            where = f" from {source}" if source else ""
            raise KeyFileError(
                f"Invalid key{where}: {e}. The key file is corrupted or does not belong to this "
                "model; restore it or re-protect the model."
            ) from None
        self._key.setflags(write=False)
        self.source = source
        self.nonce = nonce

    @property
    def spec(self) -> dict[str, Any]:
        """The key layout: ``{"length", "perm_sizes", "scale_sizes"}`` (a copy)."""
        return {
            "length": self._spec["length"],
            "perm_sizes": list(self._spec["perm_sizes"]),
            "scale_sizes": list(self._spec["scale_sizes"]),
        }

    @property
    def length(self) -> int:
        return self._spec["length"]

    def static_key(self) -> np.ndarray:
        """The canonical key (a new float32 array): indices in ``[0, n)``, ``u`` scales, ``v`` 1."""
        return self._key.copy()

    def __repr__(self) -> str:
        return (
            f"KeyMaterial(length={self.length}, perm_slots={len(self._spec['perm_sizes'])}, "
            f"scale_slots={len(self._spec['scale_sizes'])}, source={self.source!r})"
        )

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("KeyMaterial cannot be pickled: keep key material in memory only.")


def session_key(material: KeyMaterial, rng: np.random.Generator | None = None) -> np.ndarray:
    """A fresh float32 key, different in memory each call, giving bitwise identical outputs.

    Every index ``p`` of a slot of size ``n`` becomes ``p + n*t`` (``t`` random in ``0..63``,
    capped so that the value stays exact in float32); every scale pair ``(u, v)`` becomes
    ``(u * 2**a, v * 2**-a)`` with ``a`` random in ``[-8, 8]`` (left at 0 where that would leave
    the exact float32 range). Session keys change the bytes in memory; they do not stop the
    replay of a captured key.

    Args:
        material: the model's key.
        rng: randomness source; default a generator seeded from the operating system.
    """
    if not isinstance(material, KeyMaterial):
        raise TypeError(f"material must be a KeyMaterial, but got {type(material).__name__}")
    rng = rng if rng is not None else np.random.default_rng()
    spec = material._spec
    key = material.static_key()
    n_perm = sum(spec["perm_sizes"])
    n_scale = sum(spec["scale_sizes"])
    if n_perm:
        moduli = _moduli(spec)
        t_max = np.minimum(_SESSION_MAX_T, (_FLOAT32_EXACT - moduli) // moduli)
        t = rng.integers(0, t_max + 1)
        key[:n_perm] = (key[:n_perm].astype(np.int64) + moduli * t).astype(np.float32)
    if n_scale:
        u = key[n_perm : n_perm + n_scale]
        v = key[n_perm + n_scale :]
        a = rng.integers(-_SESSION_EXPONENT, _SESSION_EXPONENT + 1, size=n_scale)
        a = np.where(_split_pow2(u, a) == a, a, 0)
        a = np.where(_split_pow2(v, -a) == -a, a, 0)
        key[n_perm : n_perm + n_scale] = np.ldexp(u, a).astype(np.float32)
        key[n_perm + n_scale :] = np.ldexp(v, -a).astype(np.float32)
    return key


# --------------------------------------------------------------------------- files


def _values_sha256(values: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(values, dtype="<f4").tobytes()).hexdigest()


def _params_sha256(params: dict[str, Any]) -> str:
    """The hash that seals a key-params file: of every field but itself."""
    sealed = {k: v for k, v in params.items() if k != "params_sha256"}
    return hashlib.sha256(canonical_json(sealed)).hexdigest()


def key_commitment(static_key: np.ndarray, spec: dict[str, Any], nonce: str) -> str:
    """Hex SHA-256 that binds a model file to its key: of the 32-byte ``nonce`` (64 hex
    digits), the spec's canonical JSON and the canonical key's little-endian float32 values."""
    spec = validate_spec(spec)
    return _commitment(_canonical(static_key, spec), spec, nonce)


def _commitment(canonical: np.ndarray, spec: dict[str, Any], nonce: str) -> str:
    """:func:`key_commitment` of a key already in canonical form and a validated spec."""
    data = bytes.fromhex(nonce) + canonical_json(spec) + np.asarray(canonical, "<f4").tobytes()
    return hashlib.sha256(data).hexdigest()


def check_key_commitment(material: KeyMaterial, commitment: str, model_path: Path) -> None:
    """Refuse TXT key ``material`` that does not combine into the key whose
    :func:`key_commitment` the model file at ``model_path`` records."""
    if material.nonce is not None and (
        _commitment(material._key, material._spec, material.nonce) == commitment
    ):
        return
    raise KeyFileError(
        f"The key files in {Path(material.source).parent} do not belong to model file "
        f"{model_path}: they do not combine into the key the model file records (edited, or "
        "written by another protection). Re-deploy the key files written together with this "
        "model file (the whole folder skprotect wrote), or protect the model again."
    )


def _format_txt(values: np.ndarray) -> bytes:
    return "".join(f"{np.float32(v)!s}\n" for v in values.tolist()).encode("ascii")


def write_txt_keys(
    folder: str | os.PathLike[str],
    model_name: str,
    static_key: np.ndarray,
    spec: dict[str, Any],
    *,
    test_key: bool,
    rng: np.random.Generator,
    model_sha256: Sequence[str] = (),
    commitment_nonce: str | None = None,
) -> list[Path]:
    """Write a model's two TXT key files into ``folder``; returns ``[txt_path, json_path]``.
    They get the mode of a new file under the process's umask (0644 under ``umask 022``, 0600
    under ``umask 077``), as the model files beside them, but never write for the group or
    other users (0644 under ``umask 0`` or ``002``).

    Args:
        folder: the model's format-group folder (created if missing).
        model_name: the model name (used in both file names).
        static_key: the canonical key (``KeyLayout.static_key()``).
        spec: its layout (``KeyLayout.spec()``).
        test_key: write the static key itself (feedable as-is) instead of two shares.
        rng: randomness for the shares (pass the state's ``key_rng`` for reproducible files).
        model_sha256: the SHA-256 of each model file these keys unlock (the format group's
            artifacts): a reader refuses the pair for any other model file, so key files left
            from another protection run are an error, not garbage outputs.
        commitment_nonce: the nonce of the :func:`key_commitment` recorded in those model
            files (64 hex digits), kept in the key-params file for the runtime's check.

    Raises:
        ValueError: invalid model name, spec or key.
        KeyFileError: the files cannot be written (the message names the file).
    """
    _check_model_name(model_name)
    spec = validate_spec(spec)
    key = _canonical(static_key, spec)
    n_perm = sum(spec["perm_sizes"])
    n_scale = sum(spec["scale_sizes"])
    params: dict[str, Any] = {
        "format": KEY_PARAMS_FORMAT,
        "version": KEY_PARAMS_VERSION,
        "model": model_name,
        "static": bool(test_key),
        "spec": spec,
    }
    if test_key:
        share = key
    else:
        moduli = _moduli(spec)
        r = rng.integers(0, np.maximum(moduli, 1)) if n_perm else np.zeros(0, np.int64)
        u = key[n_perm : n_perm + n_scale]
        v = key[n_perm + n_scale :]
        a = _split_pow2(u, rng.integers(-_SHARE_EXPONENT, _SHARE_EXPONENT + 1, size=n_scale))
        b = _split_pow2(v, rng.integers(-_SHARE_EXPONENT, _SHARE_EXPONENT + 1, size=n_scale))
        share = np.empty_like(key)
        share[:n_perm] = np.mod(key[:n_perm].astype(np.int64) + r, moduli).astype(np.float32)
        share[n_perm : n_perm + n_scale] = np.ldexp(u, a).astype(np.float32)
        share[n_perm + n_scale :] = np.ldexp(v, b).astype(np.float32)
        params["perm_offsets"] = [int(x) for x in r]
        params["u_exponents"] = [int(x) for x in a]
        params["v_exponents"] = [int(x) for x in b]
    params["txt_sha256"] = _values_sha256(share)
    if model_sha256:
        params["model_sha256"] = sorted(model_sha256)
    if commitment_nonce is not None:
        params["commitment_nonce"] = commitment_nonce
    params["params_sha256"] = _params_sha256(params)
    folder = Path(folder)
    txt_path = folder / key_txt_filename(model_name)
    json_path = folder / key_params_filename(model_name)
    # the umask's mode, as the model files beside them get: a fixed 0644 (until 2026-12-07)
    # left the key readable by every user of the machine under ``umask 077``; never writable
    # by other users, whatever the umask
    mode = new_file_mode(KEY_FILE_MODE)
    for path, data in (
        (txt_path, _format_txt(share)),
        (json_path, (json.dumps(params, sort_keys=True) + "\n").encode("utf-8")),
    ):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, data, mode=mode)
        except OSError as e:
            raise KeyFileError(
                f"Could not write key file {path}: {e.strerror or e}. Free disk space or fix the "
                "folder's permissions, then protect the model again."
            ) from e
    return [txt_path, json_path]


def _read_limited(path: Path, limit: int) -> bytes:
    """A key file's bytes, refused unread above ``limit`` or when it is not a regular file."""
    try:
        with open_regular(path) as f:
            if os.fstat(f.fileno()).st_size > limit:
                raise KeyFileError(
                    f"Key file {path} is larger than any key ({limit} bytes max); it is not a "
                    "skprotect key file. Restore it or re-protect the model."
                )
            data = f.read(limit + 1)
    except (FileNotFoundError, NotADirectoryError):  # a folder on its path is a file
        raise KeyFileError(
            f"Key file {path} not found. Both key files written by the protector must be in "
            "the model's folder; copy them from outputs/ or re-protect the model."
        ) from None
    except NotRegularFileError as e:
        raise KeyFileError(
            f"Key file {e}: it cannot be read as a key. Replace it with the file the protector "
            "wrote (copy it from the protector's outputs/ folder), or re-protect the model."
        ) from None
    except OSError as e:
        raise KeyFileError(
            f"Key file {path} cannot be read: {e.strerror or e}. Make it a file this user can "
            "read: copy it from the protector's outputs/ folder, or fix its permissions."
        ) from None
    if len(data) > limit:
        raise KeyFileError(f"Key file {path} is larger than any key ({limit} bytes max).")
    return data


def _corrupt(path: Path, why: str) -> KeyFileError:
    return KeyFileError(
        f"Key file {path} is corrupted: {why}. Restore both key files from the protector's "
        "outputs/ folder or re-protect the model."
    )


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _parse_txt(path: Path, data: bytes) -> np.ndarray:
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise _corrupt(path, "it is not ASCII text") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    try:  # map() parses in C; loading must cost little more than hashing the model file
        values = np.array(list(map(float, lines)), dtype=np.float64)
    except ValueError:
        bad = next(i for i, line in enumerate(lines) if not _is_float(line))
        raise _corrupt(path, f"line {bad + 1} is not a number") from None
    with np.errstate(over="ignore"):
        out = values.astype(np.float32)
    if not np.all(np.isfinite(out)):
        bad = int(np.flatnonzero(~np.isfinite(out))[0]) + 1
        raise _corrupt(path, f"line {bad} is not a finite float32")
    return out


def _int_array(params: dict[str, Any], name: str, size: int, path: Path) -> np.ndarray:
    value = params.get(name)
    try:
        values = _int_list(value, name)
    except ValueError:
        raise _corrupt(path, f"{name} must be a list of integers") from None
    if len(values) != size:
        raise _corrupt(path, f"{name} has {len(values)} entries, expected {size} (truncated?)")
    try:
        return np.asarray(values, dtype=np.int64)
    except OverflowError:
        raise _corrupt(path, f"{name} holds out-of-range integers") from None


def _check_seal(params: dict[str, Any], path: Path) -> None:
    """Refuse a key-params file whose content does not match its ``params_sha256``. A file
    without one (written before the seal existed) may hold only the known fields: a corrupted
    field name (``"p`rams_sha256"``) would otherwise switch the seal off, and a corrupted share
    would then combine into a wrong key and wrong outputs without an error."""
    if "params_sha256" not in params:
        unknown = sorted(set(params) - _PARAMS_FIELDS)
        if unknown:
            raise _corrupt(
                path, f"it has no params_sha256 but unknown field(s) {', '.join(unknown)}"
            )
        return
    try:
        sealed = params["params_sha256"] == _params_sha256(params)
    except ValueError:  # NaN or Infinity, which no writer puts there
        sealed = False
    except RecursionError:  # parsed just below the recursion limit, too deep to hash
        raise _corrupt(path, "it is nested too deeply to be a key-params file") from None
    if not sealed:
        raise _corrupt(path, "its content does not match its params_sha256 (edited?)")


def _read_params(path: Path) -> dict[str, Any]:
    """A key-params file's fields, checked to be one (format, seal, version)."""
    raw = _read_limited(path, _MAX_JSON_BYTES)
    try:
        params = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        raise _corrupt(path, "it is not valid UTF-8 JSON") from None
    if not isinstance(params, dict) or params.get("format") != KEY_PARAMS_FORMAT:
        raise _corrupt(path, f'it is not a "{KEY_PARAMS_FORMAT}" file')
    _check_seal(params, path)
    if params.get("version") != KEY_PARAMS_VERSION:
        raise KeyFileError(
            f"Key file {path} has version {params.get('version')!r}; this skruntime reads "
            f"version {KEY_PARAMS_VERSION}. Upgrade skruntime or re-protect the model."
        )
    return params


def is_test_key(path: str | os.PathLike[str]) -> bool:
    """Whether the key-params file ``path`` says its key is a test key (``static``: written
    with ``test_key=True``), read like :func:`read_txt_keys` reads it (KeyFileError)."""
    return _read_params(Path(path)).get("static") is True


def read_txt_keys(
    folder: str | os.PathLike[str], model_name: str, model_sha256: str | None = None
) -> KeyMaterial:
    """Read a model's two TXT key files from ``folder`` and combine them.

    ``model_sha256``, the hash of the model file being loaded, is checked against the hashes
    the key files were written for (files written before they recorded them are accepted).

    Raises:
        KeyFileError: a file is missing, not a regular file (a FIFO, a device), truncated,
            corrupted, the two files do not belong together, or they were written for another
            model file (the message names the file).
    """
    _check_model_name(model_name)
    folder = Path(folder)
    txt_path = folder / key_txt_filename(model_name)
    json_path = folder / key_params_filename(model_name)
    params = _read_params(json_path)
    if params.get("model") != model_name:
        raise KeyFileError(
            f"Key file {json_path} belongs to model {params.get('model')!r}, not {model_name!r}. "
            "Restore the model's own key files."
        )
    written_for = params.get("model_sha256")
    if written_for is not None and (
        not isinstance(written_for, list)
        or not all(isinstance(h, str) and re.fullmatch(r"[0-9a-f]{64}", h) for h in written_for)
    ):
        raise _corrupt(json_path, "model_sha256 must be a list of SHA-256 hex digests")
    if model_sha256 is not None and written_for is not None and model_sha256 not in written_for:
        raise KeyFileError(
            f"Key files in {folder} were written for another protection of model "
            f"{model_name!r} (for model file(s) {', '.join(h[:12] for h in written_for)}…, not "
            f"{model_sha256[:12]}…). Deploy the key files written together with this model "
            "file, or re-protect the model."
        )
    nonce = params.get("commitment_nonce")
    if nonce is not None and not (isinstance(nonce, str) and re.fullmatch(r"[0-9a-f]{64}", nonce)):
        raise _corrupt(json_path, "commitment_nonce must be 64 hex digits")
    static = params.get("static")
    if not isinstance(static, bool):
        raise _corrupt(json_path, "static must be true or false")
    try:
        spec = validate_spec(params.get("spec"))
    except ValueError as e:
        raise _corrupt(json_path, str(e)) from None
    share = _parse_txt(txt_path, _read_limited(txt_path, _MAX_TXT_BYTES))
    if share.size != spec["length"]:
        raise _corrupt(
            txt_path, f"it has {share.size} values but the key has {spec['length']} (truncated?)"
        )
    if params.get("txt_sha256") != _values_sha256(share):
        raise KeyFileError(
            f"Key files {txt_path.name} and {json_path.name} in {folder} do not belong together "
            "(one was modified or comes from another protection run). Restore both files from "
            "the same protection run, or re-protect the model."
        )
    if not static:
        n_perm = sum(spec["perm_sizes"])
        n_scale = sum(spec["scale_sizes"])
        r = _int_array(params, "perm_offsets", n_perm, json_path)
        a = _int_array(params, "u_exponents", n_scale, json_path)
        b = _int_array(params, "v_exponents", n_scale, json_path)
        if np.any(np.abs(a) > _SHARE_EXPONENT) or np.any(np.abs(b) > _SHARE_EXPONENT):
            raise _corrupt(json_path, "an exponent is out of range")
        key = share.copy()
        key[:n_perm] = np.mod(share[:n_perm].astype(np.int64) - r, _moduli(spec)).astype(np.float32)
        key[n_perm : n_perm + n_scale] = np.ldexp(share[n_perm : n_perm + n_scale], -a)
        key[n_perm + n_scale :] = np.ldexp(share[n_perm + n_scale :], -b)
        share = key
    return KeyMaterial(share, spec, source=str(txt_path), nonce=nonce)


class TxtKeySource:
    """The TXT platform's :class:`~.keysource.KeySource`: the two plain key files in the
    folder of the configuration's key files."""

    def __init__(self, outputs_dir: Path, config_path: Path, unlock: KeyUnlock) -> None:
        """Refuse a ``kek``: TXT keys are plain files, nothing to decrypt (the licence checks
        the runtime's right to run, it releases no TXT key)."""
        if unlock.kek is not None:
            raise KeyUnavailableError(
                f"kek decrypts LINUX key files, but {config_path} is for platform TXT, whose "
                "keys are in plain files: leave kek (--kek) out."
            )
        self._outputs_dir = outputs_dir
        self._config_path = config_path

    def read(
        self, model_name: str, fmt: str, key_files: Sequence[str], model_sha256: str
    ) -> KeyMaterial:
        """The key from the pair of files in the folder of ``key_files[0]``."""
        if not key_files:
            raise KeyFileError(
                f"The configuration {self._config_path} lists no key files for model "
                f"{model_name!r} ({fmt}). Re-protect the model."
            )
        folder = (self._outputs_dir / key_files[0]).parent
        return read_txt_keys(folder, model_name, model_sha256)
