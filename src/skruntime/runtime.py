"""SkRuntime: read an application's configuration, verify and load its protected models.

>>> rt = SkRuntime("outputs/default_app")  # doctest: +SKIP
>>> model = rt.load("my_model", fmt="onnx")  # doctest: +SKIP
>>> y = model(x)  # doctest: +SKIP

Loading verifies the model file's SHA-256 against the signed configuration (platform version
>= 1) and the inputs the file records against the configuration's, unlocks the model's key
(TXT: the two key files; LINUX: the encrypted key file and the key-encryption key) and derives
a fresh session key, fed as the model's last input. This module never imports torch: the ONNX
path runs with only numpy, onnxruntime and cryptography installed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np

from .backends import backend_class
from .backends.base import Backend, BackendOptions, ModelFile, as_numpy
from .backends.inputs import (
    INPUTS_METADATA,
    key_commitment_of,
    range_problem,
    range_text,
    recorded_commitment,
    spec_name,
    spec_ranges,
)
from .config import (
    CONFIG_FILENAMES,
    PLATFORMS,
    SUPPORTED_PLATFORM_VERSIONS,
    Config,
    InputSpec,
    ModelEntry,
    parse_signed_config,
    read_config_bytes,
)
from .errors import (
    BackendError,
    ConfigurationError,
    InputError,
    IntegrityError,
    KeyFileError,
    KeyUnavailableError,
    ModelClosedError,
    ModelFileError,
    ModelNotFoundError,
)
from .files import NotRegularFileError
from .keyfile import (
    TxtKeySource,
    check_key_commitment,
    is_test_key,
    key_params_filename,
    session_key,
)
from .keysource import KEY_SOURCES, KeySource, KeyUnlock, check_kek

__all__ = ["COMPATIBILITY_TABLE", "RUNTIME_VERSION", "LoadedModel", "SkRuntime"]

RUNTIME_VERSION = "0.3.0"

#: (platform version, skprotect minimal version, skruntime minimal version, licence server
#: minimal version): the seed's table with this project's own package versions.
COMPATIBILITY_TABLE: tuple[tuple[int, str, str, str], ...] = (
    (0, "0.3.0", "0.3.0", "none needed"),
    (1, "0.3.0", "0.3.0", "none needed"),
    (2, "0.3.0", "0.3.0", "0.3.0"),
)


def compatibility_table() -> str:
    """The platform-version compatibility table as Markdown text."""
    header = (
        "| Platform version | skprotect minimal version | skruntime minimal version | "
        "Licensing server minimal version |"
    )
    lines = [header, "|---|---|---|---|"]
    lines += [f"| {v} | {p} | {r} | {s} |" for v, p, r, s in COMPATIBILITY_TABLE]
    return "\n".join(lines)


def _newer_version_error(path: Path, err: ConfigurationError) -> ConfigurationError | None:
    """The error with the compatibility table when ``err`` is about a too-new version."""
    if "newer than this skruntime supports" not in str(err):
        return None
    supported = ", ".join(str(v) for v in SUPPORTED_PLATFORM_VERSIONS)
    return ConfigurationError(
        f"{err}\nThis skruntime ({RUNTIME_VERSION}) reads platform versions {supported}. "
        f"Platform version compatibility:\n{compatibility_table()}"
    )


_DEFAULT_OVERLAP_SECONDS = 30 * 24 * 3600
_DEFAULT_REQUESTED_INFERENCES = 10_000
_DEFAULT_CONTRACT_END_CHECK_SECONDS = 24 * 3600


def _check_licensing_options(licence_server: object, options: Mapping[str, Any]) -> None:
    """Refuse licensing options that would be silently ignored (no ``licence_server``), and a
    ``state_dir`` that is not a path (the licence client checks the other values)."""
    defaults = {
        "server_public_key": None,
        "state_dir": None,
        "overlap_seconds": _DEFAULT_OVERLAP_SECONDS,
        "requested_inferences": _DEFAULT_REQUESTED_INFERENCES,
        "contract_end_check_seconds": _DEFAULT_CONTRACT_END_CHECK_SECONDS,
        "transport": None,
    }
    if licence_server is None:
        ignored = [
            n
            for n, v in options.items()
            if (v is not None if defaults[n] is None else v != defaults[n])
        ]
        if ignored:
            raise ConfigurationError(
                f"{', '.join(ignored)} {'is' if len(ignored) == 1 else 'are'} only used with "
                "licence_server=, which is not given: pass licence_server= (the sklicense "
                "server's URL) to license, or leave them out."
            )
    state_dir = options["state_dir"]
    if state_dir is not None and (
        not isinstance(state_dir, str | os.PathLike) or os.fspath(state_dir) == ""
    ):
        # "" would be the current folder: made owner-only, with the device key written into it
        raise ConfigurationError(
            f"state_dir must be a folder path (str or os.PathLike, not empty) or None, but got "
            f"the {type(state_dir).__name__} {state_dir!r}."
        )


def _absolute(path: Path) -> Path:
    """``path`` made absolute against the current folder (not resolved: its links and ``..``
    stay as given); as given when the current folder is gone (the folder check then says so)."""
    try:
        return path.absolute()
    except OSError:
        return path


def _platform_name(platform: object) -> str:
    value = getattr(platform, "value", platform)  # accepts SkProtectorPyTorch.ExportPlatform
    if isinstance(value, str) and value.upper() in PLATFORMS:
        return value.upper()
    raise ConfigurationError(
        f"platform must be one of {', '.join(PLATFORMS)} or None (auto-detect), but got "
        f"{platform!r}."
    )


def _forget_callee_locals(err: BaseException) -> None:
    """Clear the local variables of the frames that ``err`` unwound below the frame handling it
    (and those of the exceptions chained to it there), keeping file, line and function of each.

    Those frames held key material: a backend's the session key among its inputs, a key
    source's the key-encryption key and the decrypted key. A crash reporter that records local
    variables (``sentry-sdk`` by default, ``traceback.TracebackException(capture_locals=True)``)
    wrote their ``repr`` into its report: the whole key vector of a failed call, the KEK of a
    load refused for a swapped ``mev_*.bin``. An exception chained from outside the failed call
    (the caller's own, being handled when it called) is left as it is."""
    tb = err.__traceback__
    below: set[FrameType] = set()
    chain: list[BaseException | None] = [err]
    seen: set[int] = set()
    while chain:
        e = chain.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        first = e.__traceback__ if e is not err else (tb.tb_next if tb is not None else None)
        if first is None or (e is not err and first.tb_frame not in below):
            continue
        t = first
        while t is not None:
            below.add(t.tb_frame)
            t = t.tb_next
        traceback.clear_frames(first)  # skips frames still running
        chain += [e.__cause__, e.__context__]


class SkRuntime:
    """An application's protected models, as written by skprotect in ``outputs/<application>/``.

    Args:
        outputs_dir: the folder holding the configuration (``skconfig.json`` for TXT, ``skrpl``
            for LINUX) and the model sub-folders.
        platform: ``"TXT"`` or ``"LINUX"``; ``None`` detects it from the configuration present
            (an error when both are).
        public_key: the application's raw 32-byte Ed25519 public key; when given, a
            configuration signed by any other key is refused.
        kek: LINUX only: the 32-byte key-encryption key released by the licence server.
        licence_server: URL of the ``sklicense`` server. Needs a platform-version-2
            configuration (its customer) and ``server_public_key``. Each :meth:`load` then holds
            a valid licence (requested, cached, renewed: :mod:`skruntime.licensing.client`),
            LINUX keys are unwrapped from the licence when ``kek`` is not given, and every
            inference (one call of the loaded model, whatever its batch size) is counted
            against the licence's allowance. ``None``: no licensing (LINUX then needs ``kek``).
        server_public_key: the licence server's raw 32-byte Ed25519 public key (pinned), or a
            list of up to 8 such keys, any of which may sign: pin the current key and the next
            before the server's signing key is rotated (docs/licensing.md).
        state_dir: the runtime's state folder (device identity, licence cache, counters);
            default ``$SKRUNTIME_STATE_DIR`` or ``~/.local/state/skruntime``.
        overlap_seconds: renew the licence this long before it expires (default 30 days).
        requested_inferences: inferences each licence asks for when the customer has a quota
            (default 10,000; the server grants at most what remains); ``None`` asks for all
            that remains, leaving nothing to the customer's other devices.
        contract_end_check_seconds: how often a licence that a renewal cannot extend (it ends
            at the contract end) is checked with the server, free of charge, so that a contract
            extended or ended early, or a device revoked, since takes effect (default a day).
        transport: an ``httpx`` transport for the licence client, for tests and custom
            networking.

    Raises:
        ConfigurationError: missing folder or configuration, a configuration that is not a
            regular file (a named pipe, a device: refused unread), both platforms present without
            ``platform=``, invalid signature, too-new platform version (the message shows the
            compatibility table), invalid content; a licensing option (``server_public_key``,
            ``state_dir``, ``overlap_seconds``, ``requested_inferences``,
            ``contract_end_check_seconds``, ``transport``) given
            without ``licence_server`` or of an invalid value.

    >>> rt = SkRuntime("outputs/default_app")  # doctest: +SKIP
    >>> rt.models()  # doctest: +SKIP
    ['my_model']
    >>> with rt.load("my_model", fmt="onnx") as model:  # doctest: +SKIP
    ...     y = model(x)
    """

    SUPPORTED_PLATFORM_VERSIONS = SUPPORTED_PLATFORM_VERSIONS

    def __init__(
        self,
        outputs_dir: str | os.PathLike[str],
        *,
        platform: str | None = None,
        public_key: bytes | None = None,
        kek: bytes | None = None,
        licence_server: str | None = None,
        server_public_key: bytes | Sequence[bytes] | None = None,
        state_dir: str | os.PathLike[str] | None = None,
        overlap_seconds: float = _DEFAULT_OVERLAP_SECONDS,
        requested_inferences: int | None = _DEFAULT_REQUESTED_INFERENCES,
        contract_end_check_seconds: float = _DEFAULT_CONTRACT_END_CHECK_SECONDS,
        transport: Any = None,
    ) -> None:
        self._licence_client: Any = None
        _check_licensing_options(
            licence_server,
            {
                "server_public_key": server_public_key,
                "state_dir": state_dir,
                "overlap_seconds": overlap_seconds,
                "requested_inferences": requested_inferences,
                "contract_end_check_seconds": contract_end_check_seconds,
                "transport": transport,
            },
        )
        if not isinstance(outputs_dir, str | os.PathLike):
            raise ConfigurationError(
                "outputs_dir must be the path (str or os.PathLike) of the folder skprotect wrote, "
                f"e.g. 'outputs/default_app', but got the {type(outputs_dir).__name__} "
                f"{outputs_dir!r}."
            )
        # absolute: load() reads the model and key files later, after the application may have
        # changed its working folder (a daemon's chdir("/")), which made a relative folder
        # name another one ("not found", or "a new version was deployed")
        self.outputs_dir = _absolute(Path(outputs_dir))
        if not self.outputs_dir.is_dir():
            raise ConfigurationError(
                f"Folder {self.outputs_dir} does not exist or is not a folder. Point SkRuntime "
                "at outputs/<application_name>/ written by skprotect."
            )
        # lexists: a link that leads nowhere (or loops) is refused by name, not "no configuration"
        found = [p for p, n in CONFIG_FILENAMES.items() if os.path.lexists(self.outputs_dir / n)]
        if platform is None:
            if not found:
                expected = " or ".join(f"{n} ({p})" for p, n in CONFIG_FILENAMES.items())
                raise ConfigurationError(
                    f"No configuration in {self.outputs_dir}: expected {expected}. Point "
                    "SkRuntime at outputs/<application_name>/ written by skprotect."
                )
            if len(found) > 1:
                raise ConfigurationError(
                    f"{self.outputs_dir} holds configurations for several platforms "
                    f"({', '.join(CONFIG_FILENAMES[p] for p in found)}); pass "
                    f"platform={' or '.join(repr(p) for p in found)} (skprotect run: --platform "
                    f"{' or '.join(found)}) to choose one."
                )
            platform = found[0]
        self.platform = _platform_name(platform)
        self.config_path = self.outputs_dir / CONFIG_FILENAMES[self.platform]
        if found and self.platform not in found:
            other = found[0]
            raise ConfigurationError(
                f"No {self.platform} configuration ({self.config_path.name}) in "
                f"{self.outputs_dir}; it holds the {other} one ({CONFIG_FILENAMES[other]}). Pass "
                f"platform={other!r} (skprotect run: --platform {other}), or protect the models "
                f"for {self.platform}."
            )
        # read once: the licence request sends these very bytes, not a second read of a file
        # that may have been replaced since they were verified
        raw = read_config_bytes(self.config_path)
        self._config_sha256 = hashlib.sha256(raw).digest()
        try:
            config, signed, signer = parse_signed_config(
                raw, self.config_path, public_key=public_key
            )
        except ConfigurationError as e:
            raise (_newer_version_error(self.config_path, e) or e) from None
        if config.platform != self.platform:
            raise ConfigurationError(
                f"Configuration file {self.config_path} is for platform {config.platform}, but "
                f"its name says {self.platform}. Restore the files written by skprotect."
            )
        self.config: Config = config
        # the other platform's configuration is read only when signed by this one's key
        self._signer = signer
        unlock = KeyUnlock(
            kek=check_kek(kek),
            from_licence=self._kek_from_licence if licence_server is not None else None,
        )
        self._keys: KeySource = KEY_SOURCES[self.platform](
            self.outputs_dir, self.config_path, unlock
        )
        if licence_server is not None:
            self._licence_client = self._make_licence_client(
                raw,
                signed,
                licence_server,
                server_public_key,
                state_dir,
                overlap_seconds,
                requested_inferences,
                contract_end_check_seconds,
                transport,
            )

    def _make_licence_client(
        self,
        raw: bytes,
        signed: dict[str, Any],
        server: str,
        server_public_key: bytes | Sequence[bytes] | None,
        state_dir: str | os.PathLike[str] | None,
        overlap_seconds: float,
        requested_inferences: int | None,
        contract_end_check_seconds: float,
        transport: Any,
    ) -> Any:
        """The licence client for ``self.config``. ``raw``: the configuration bytes that
        ``self.config`` was verified from, ``signed``: their signed part as parsed then; the
        SHA-256 of one and the other go into the licence requests, so that they always
        describe the configuration this runtime runs."""
        if self.config.platform_version < 2 or self.config.customer is None:
            raise ConfigurationError(
                f"licence_server needs a platform version 2 configuration (it names the "
                f"customer), but {self.config_path} has platform version "
                f"{self.config.platform_version}. Migrate it with "
                "migrate_configuration(2, ..., customer) or drop licence_server."
            )
        if server_public_key is None:
            raise ConfigurationError(
                "licence_server needs server_public_key: the licence server's raw 32-byte "
                "Ed25519 public key, pinned so that only that server's licences are accepted."
            )
        from .licensing.client import LicenceClient  # imports httpx: only when licensing

        try:
            return LicenceClient(
                server,
                state_dir=state_dir,
                server_public_key=server_public_key,
                application=self.config.application,
                customer_id=self.config.customer.id,
                models=list(self.config.models),
                config_sha256=hashlib.sha256(raw).hexdigest(),
                configuration=signed,
                overlap_seconds=overlap_seconds,
                requested_inferences=requested_inferences,
                contract_end_check_seconds=contract_end_check_seconds,
                transport=transport,
            )
        except ValueError as e:  # a bad overlap_seconds, requested_inferences or check period
            raise ConfigurationError(str(e)) from None

    def _config_replaced(self) -> bool:
        """Whether the configuration file no longer holds the bytes this runtime verified when
        it was created: a model file then differs from ``self.config`` by a redeployment, not
        by tampering (an unreadable or removed file counts as replaced)."""
        try:
            raw = read_config_bytes(self.config_path)
        except ConfigurationError:
            return True
        return hashlib.sha256(raw).digest() != self._config_sha256

    def _other_platform_records(self, digest: str) -> str | None:
        """The other platform's configuration file in this folder when it records a model file
        of SHA-256 ``digest`` (both platforms write a group's model file to one path: a later
        protection for the other one, with other settings, replaced this one's), else None.
        Before, that file was said to be "tampered or post-processed". Only a configuration
        signed by the key this one is (``public_key``, else its own) is read: one signed by
        any key could name a tampered file."""
        for platform, name in CONFIG_FILENAMES.items():
            if platform == self.platform:
                continue
            try:
                raw = read_config_bytes(self.outputs_dir / name)
                other = parse_signed_config(raw, name, public_key=self._signer)[0]
            except ConfigurationError:  # none, or not one this application signed
                continue
            recorded = (f.sha256 for e in other.models.values() for f in e.formats.values())
            if digest in recorded:
                return name
        return None

    def _kek_from_licence(self) -> bytes:
        """The key-encryption key of a valid licence, unwrapped in memory for one load."""
        return self._licence_client.kek()

    @property
    def licence_client(self) -> Any:
        """The :class:`~skruntime.licensing.client.LicenceClient`, or None without licensing."""
        return self._licence_client

    def close(self) -> None:
        """Flush the inference counter and report usage to the licence server (idempotent).

        Licensed models loaded from this runtime cannot run any more afterwards.
        """
        if self._licence_client is not None:
            self._licence_client.close()

    def __reduce__(self) -> Any:
        raise TypeError(
            "SkRuntime cannot be pickled: it may hold key material (kek) and licence state. "
            "Create one SkRuntime in each process instead."
        )

    def __enter__(self) -> SkRuntime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"SkRuntime({str(self.outputs_dir)!r}, platform={self.platform!r}, "
            f"platform_version={self.config.platform_version}, models={self.models()})"
        )

    def models(self) -> list[str]:
        """The protected model names."""
        return list(self.config.models)

    def formats(self, model_name: str) -> list[str]:
        """The formats ``model_name`` was protected for (``onnx``, ``torchscript_cpu``, ...)."""
        return list(self._model(model_name).formats)

    def _model(self, model_name: str):
        try:
            return self.config.models[model_name]
        except (KeyError, TypeError):
            raise ModelNotFoundError(
                f"No model {model_name!r} in {self.config_path}. Models there: "
                f"{', '.join(self.config.models) or 'none'}."
            ) from None

    def load(
        self,
        model_name: str,
        fmt: str = "onnx",
        *,
        device: str = "cpu",
        intra_op_threads: int | None = None,
        inter_op_threads: int | None = None,
        session_options: Mapping[str, Any] | None = None,
        static_key: bool = False,
    ) -> LoadedModel:
        """Verify and load one protected model file with a fresh session key.

        The file is read once: its SHA-256 is checked and the backend loads those very bytes,
        so a file replaced after the check cannot run.

        Args:
            model_name: a name from :meth:`models`.
            fmt: a format from :meth:`formats` (``onnx``, ``torchscript_cpu``, ``inductor_cpu``,
                ...).
            device: ``"cpu"`` or ``"cuda[:N]"``.
            intra_op_threads, inter_op_threads: thread settings of the backend.
            session_options: passed through to the backend (ONNX Runtime: attributes of
                ``SessionOptions``, and ``"providers"``).
            static_key: feed the static key instead of a fresh session key; only for models
                protected with ``test_key=True``.

        Raises:
            BackendError: an invalid ``device`` (``inductor_cpu`` runs only on the CPU,
                ``inductor_gpu`` only on CUDA), thread count or ``session_options`` (checked
                first), a TorchScript file whose code is bound to another device (it names
                the device or formats to use), an ``.onnx`` file over 2 GiB (refused before
                it is read), or the framework could not load the file.
            ModelNotFoundError: unknown model or format not protected.
            ModelFileError: the model file is missing, unreadable, not a regular file (a
                folder, a named pipe, a device: refused unread) or larger than the process can
                allocate.
            IntegrityError: the model file's SHA-256 differs from the configuration's, or the
                inputs it records (``skprotect.inputs``) disagree with the configuration's.
            KeyFileError: key files missing, not regular files, corrupted, swapped or of the
                wrong length, or TXT key files that do not combine into the key the model
                file records (refused before the backend is built).
            KeyUnavailableError: LINUX without ``kek`` or licence server, ``static_key`` on a
                non-test key, or a ``static_key`` that is not a bool.
            LicenceError: licensing is on and no valid licence is available (its subclasses
                say why: denied, server unreachable after expiry, clock set back, ...).
        """
        options = BackendOptions(
            device=device,
            intra_op_threads=intra_op_threads,
            inter_op_threads=inter_op_threads,
            session_options={} if session_options is None else session_options,
        )
        if not isinstance(static_key, bool):
            raise KeyUnavailableError(
                f"static_key must be True or False, but got the {type(static_key).__name__} "
                f"{static_key!r}."
            )
        entry = self._model(model_name)
        if not isinstance(fmt, str):  # a list would raise TypeError, ExportFormat.ONNX mislead
            raise ModelNotFoundError(
                f"fmt must be a format name (str), one of {', '.join(entry.formats)} for model "
                f"{model_name!r}, but got the {type(fmt).__name__} {fmt!r}."
            )
        if fmt not in entry.formats:
            raise ModelNotFoundError(
                f"Model {model_name!r} is not protected for format {fmt!r}; its formats: "
                f"{', '.join(entry.formats)}. Protect it with that format or load another one."
            )
        _check_compiled_device(fmt, options.device, model_name, entry.formats)
        backend_type = backend_class(fmt)
        backend_type.check_options(options)  # providers, option names, CUDA: before any read
        fentry = entry.formats[fmt]
        path = self.outputs_dir / fentry.file
        # read once and hashed in every platform version (the key files name the model file
        # they unlock); the backend loads these bytes, never the path: a file replaced after
        # this check cannot run
        try:  # a file too large for the backend (ONNX: 2 GiB) is refused before it is read
            model_file = ModelFile.read(path, getattr(backend_type, "check_size", None))
        # NotADirectoryError: a folder on its path is a file, so there is no such file (it was
        # told to give this user read access)
        except (FileNotFoundError, NotADirectoryError, NotRegularFileError) as e:
            # a folder, or a link to a device, is there: "not found" would contradict `ls`
            state = (
                f"is not a regular file but {e.kind}"
                if isinstance(e, NotRegularFileError)
                else "not found"
            )
            raise ModelFileError(
                f"Model file {path} of model {model_name!r} ({fmt}) {state}. Deploy the whole "
                f"{self.outputs_dir.name}/ folder written by skprotect."
            ) from None
        except MemoryError as e:
            raise ModelFileError(
                f"Model file {path} of model {model_name!r} ({fmt}) cannot be read whole, as "
                f"load() reads it (to check its SHA-256 and load those very bytes): "
                f"{e or 'out of memory'}. If that is the size of the file skprotect wrote, run "
                "with more memory; else deploy the "
                f"{self.outputs_dir.name}/ folder written by skprotect again."
            ) from None
        except OSError as e:
            raise ModelFileError(
                f"Model file {path} cannot be read: {e.strerror or e}. Give this user read "
                f"access to it, or deploy the {self.outputs_dir.name}/ folder written by "
                "skprotect again."
            ) from None
        digest = model_file.sha256
        if fentry.sha256 is not None and digest != fentry.sha256:
            if self._config_replaced():
                raise IntegrityError(
                    f"Model file {path} does not match the SHA-256 in {self.config_path.name} as "
                    "this SkRuntime read it when it was created, and the file has changed since "
                    "(a new version was deployed). Create a new SkRuntime to load the new version."
                )
            if (other := self._other_platform_records(digest)) is not None:
                raise IntegrityError(
                    f"Model file {path} does not match the SHA-256 in {self.config_path.name}: "
                    f"it is the file that {other} records, written by a protection of "
                    f"{model_name!r} for that platform after this one's, with other settings "
                    "(another lock_preset, quantize_compatibility or dynamic_shapes, a new "
                    f"version or rotate_keys). Protect {model_name!r} for {self.platform} "
                    "again, or protect both platforms with the same settings so that they "
                    "share the file, or deploy each platform from its own outputs folder."
                )
            raise IntegrityError(
                f"Model file {path} does not match the SHA-256 in {self.config_path.name}: "
                "it was tampered or post-processed; re-deploy the file written by skprotect."
            )
        client = self._licence_client
        if client is not None:  # after the local checks: a typo or bad file is no licence error
            client.ensure_licence()
        try:
            material = self._keys.read(model_name, fmt, fentry.key_files, digest)
        except BaseException as err:  # its frames held the KEK and the decrypted key
            _forget_callee_locals(err)
            raise
        if material.length != entry.key.length:
            raise KeyFileError(
                f"The key of model {model_name!r} ({fmt}) from {material.source} has "
                f"{material.length} values, but the configuration expects {entry.key.length}. "
                "The key files do not belong to this model; restore them or re-protect."
            )
        # MEV key files are bound to the model file by their AES-GCM tag already. The record is
        # read from the file's bytes, before the backend is built: edited key files were refused
        # only after an AOTInductor package was loaded or an onnxruntime session built
        txt_keys = isinstance(self._keys, TxtKeySource)
        checked = recorded_commitment(model_file.data) if txt_keys else None
        if checked is not None:
            check_key_commitment(material, checked, path)
        if static_key:
            if not self._is_static(fentry.key_files, model_name):
                raise KeyUnavailableError(
                    f"static_key=True (skprotect run: --static-key) needs a model protected with "
                    f"test_key=True, but the key of {model_name!r} ({fmt}) is not a test key. Use "
                    "the default session key."
                )
            key = material.static_key()
        else:
            key = session_key(material)
        try:
            backend = backend_type(model_file, options)
        except BaseException:
            key[:] = 0
            raise
        record = getattr(backend, "input_record", None)  # None: written before it was recorded
        if record is not None and (problems := _record_disagreement(record, entry)):
            key[:] = 0
            backend.close()
            raise IntegrityError(
                f"Model file {path} of model {model_name!r} ({fmt}) records inputs (its "
                f"{INPUTS_METADATA} metadata) that disagree with {self.config_path.name}: "
                f"{'; '.join(problems)}. Calls are checked against both (an AOTInductor package "
                "reads its inputs as its record describes them), so they must agree; they were "
                "not written together (a model file from another protection, or a configuration "
                "signed again): re-deploy the model file, key files and configuration that "
                f"skprotect wrote together (the whole {self.outputs_dir.name}/ folder), or "
                "protect the model again."
            )
        commitment = key_commitment_of(record)
        if txt_keys and commitment not in (None, checked):  # the backend read another record
            try:
                check_key_commitment(material, commitment, path)
            except KeyFileError:
                key[:] = 0
                backend.close()
                raise
        meter = client.consume if client is not None else None
        return LoadedModel(model_name, fmt, entry.inputs, entry.outputs, key, backend, meter)

    def _is_static(self, key_files: Sequence[str], model_name: str) -> bool:
        """Whether the model's key-params file among ``key_files`` marks a test key, read and
        checked as the key source reads it (KeyFileError): it was read again unchecked, so a
        named pipe put there blocked, and an edited file was believed."""
        name = key_params_filename(model_name)
        params = [k for k in key_files if k.rsplit("/", 1)[-1] == name]
        if not params:
            return False
        return is_test_key(self.outputs_dir / params[0])


def _record_disagreement(record: Sequence[Mapping[str, Any]], entry: ModelEntry) -> list[str]:
    """How a model file's input record (:data:`~.backends.inputs.INPUTS_METADATA`, parsed, key
    last) contradicts the configuration's ``entry`` (its inputs and key), one phrase each;
    empty when they agree.

    The configuration records no ranges, so an axis agrees when the record accepts the
    configuration's example size on it: a static axis has that size in the record, or is
    dynamic there with that size in its range (a trace records a ``Dim.AUTO`` axis that
    torch.export fixed as dynamic); an axis the configuration makes dynamic is dynamic in the
    record too (a static one would refuse every other size)."""
    key = entry.key
    expected = [*entry.inputs, InputSpec(key.name, (key.length,), "float32")]
    if len(record) != len(expected):
        found = ", ".join(repr(spec_name(s, i)) for i, s in enumerate(record))
        wanted = ", ".join(repr(s.name) for s in expected)
        return [
            f"the file records {len(record)} inputs ({found}), the configuration "
            f"{len(expected) - 1} and the key ({wanted})"
        ]
    problems = []
    for i, (spec, want) in enumerate(zip(record, expected, strict=True)):
        is_key = i == len(expected) - 1
        what = f"the key {want.name!r}" if is_key else f"input {want.name!r}"
        if spec.get("name") is not None and spec["name"] != want.name:
            problems.append(
                f"input #{i} is named {spec['name']!r} in the file, {want.name!r} in the "
                "configuration"
            )
        if spec.get("key") and not is_key:
            problems.append(f"the file marks input #{i} ({want.name!r}) as the key")
        if spec["dtype"] != want.dtype:
            source = "a key is float32" if is_key else f"the configuration says {want.dtype}"
            problems.append(f"{what} has dtype {spec['dtype']} in the file, but {source}")
        shape = spec["shape"]
        if len(shape) != len(want.shape):
            problems.append(
                f"{what} has {len(shape)} axes in the file, {len(want.shape)} in the configuration"
            )
            continue
        ranges = spec_ranges(spec)
        for axis, (size, example) in enumerate(zip(shape, want.shape, strict=True)):
            dim = want.dynamic_dims.get(axis)
            where = f"{what} axis {axis}"
            if size is not None and dim is not None:
                problems.append(
                    f"{where} is static ({size}) in the file, dynamic ({dim!r}) in the "
                    "configuration"
                )
            elif size is not None and size != example:
                where = what if is_key else where
                size_of = "length" if is_key else "size"
                problems.append(
                    f"{where} has {size_of} {size} in the file, {example} in the configuration"
                )
            elif size is None:
                low, high = ranges.get(axis, (0, None))
                if example < low or (high is not None and example > high):
                    problems.append(
                        f"{where} takes sizes {range_text(low, high)} in the file, which leave "
                        f"out the configuration's {'example ' if dim else ''}size {example}"
                    )
    return problems


#: AOTInductor formats and the device kind their package is compiled for. torch loads a GPU
#: package on CUDA even for device="cpu" (device_index -1: the current GPU), which was then fed
#: CPU tensors (its compiled code checks their device only under AOTI_RUNTIME_CHECK_INPUTS); a
#: CPU package on a GPU was refused by torch ("Incorrect device passed to aoti_runner_cpu") or
#: as if a GPU format had been asked for, neither saying what to load instead.
_COMPILED_FOR = {"inductor_cpu": "cpu", "inductor_gpu": "cuda"}


def _check_compiled_device(
    fmt: str, device: str, model_name: str, formats: Mapping[str, Any]
) -> None:
    """Refuse a ``device`` of the other kind than an AOTInductor format is compiled for."""
    wanted = _COMPILED_FOR.get(fmt)
    if wanted is None or (device == "cpu") == (wanted == "cpu"):
        return
    other = next(f for f, kind in _COMPILED_FOR.items() if kind != wanted)
    where = "the CPU" if wanted == "cpu" else "CUDA GPUs"
    use = (
        "device='cpu' (skprotect run: --device cpu)"
        if wanted == "cpu"
        else "device='cuda' or 'cuda:N' (skprotect run: --device cuda)"
    )
    instead = (
        f"load format {other!r} for device={device!r}"
        if other in formats
        else f"protect the model for {other} too to run it on device={device!r}"
    )
    raise BackendError(
        f"Format {fmt!r} of model {model_name!r} is compiled for {where} and cannot run on "
        f"device={device!r}: load it with {use}, or {instead}."
    )


def _dims_text(spec: InputSpec) -> str:
    dims = [spec.dynamic_dims.get(a, str(s)) for a, s in enumerate(spec.shape)]
    return f"({', '.join(dims)}{',' if len(dims) == 1 else ''})"


def _describe(check: _InputCheck) -> str:
    spec = check.spec
    ranges = "".join(
        f", {spec.dynamic_dims[axis]} {range_text(*sizes)}" for axis, sizes in check.ranges.items()
    )
    return f"{spec.name!r}: shape {_dims_text(spec)}, dtype {spec.dtype}{ranges}"


class _InputCheck:
    """Precomputed per-input checks: dtype, rank, static sizes, ranges of the dynamic sizes."""

    __slots__ = ("dtype", "ndim", "np_dtype", "ranges", "spec", "static")

    def __init__(self, spec: InputSpec, ranges: Mapping[int, tuple[int, int | None]]) -> None:
        """``ranges``: the sizes the model file records for its dynamic axes (``{}``: none
        recorded, as in files written before they were), of the axes the configuration makes
        dynamic."""
        self.spec = spec
        self.ranges = {a: r for a, r in sorted(ranges.items()) if a in spec.dynamic_dims}
        self.dtype = spec.dtype
        # the numpy dtype object, for an identity fast path; bfloat16 is not numpy's own (an
        # ml_dtypes array may have it) and always takes the checks of the slow path, as does a
        # dtype numpy does not know (float8 types)
        self.np_dtype: np.dtype | None = None
        if spec.dtype != "bfloat16":
            with contextlib.suppress(TypeError):
                self.np_dtype = np.dtype(spec.dtype)
        self.ndim = len(spec.shape)
        self.static = tuple((a, s) for a, s in enumerate(spec.shape) if a not in spec.dynamic_dims)


def _shared_dims(specs: Sequence[InputSpec]) -> tuple[tuple[str, tuple[tuple[int, int], ...]], ...]:
    """Dynamic dimensions named on several axes (``(name, ((input index, axis), ...))``): their
    sizes must agree in every call. torch.export gives one name to one symbolic size (two inputs
    declared with the same ``Dim("batch")``); the names it writes for unnamed hints
    (``DimHint(AUTO)``, ...) tie nothing and are left out."""
    places: dict[str, list[tuple[int, int]]] = {}
    for i, spec in enumerate(specs):
        for axis, name in spec.dynamic_dims.items():
            if not name.startswith("DimHint("):
                places.setdefault(name, []).append((i, axis))
    return tuple((name, tuple(where)) for name, where in places.items() if len(where) > 1)


#: Python values read as arrays (``np.asarray``); anything else that is not an array is refused.
_PYTHON_ARRAYS = (list, tuple, int, float, complex)


def _dtype_name(x: Any) -> str:
    dtype = x.dtype
    if isinstance(dtype, np.dtype):
        return dtype.name
    return str(dtype).removeprefix("torch.")


def _tensor_problem(x: Any) -> str | None:
    """Why a torch tensor cannot be fed, or None: a sparse tensor or one on the ``meta`` device
    has no dense values to read, and each framework would fail on it with its own error type
    (read without importing torch: other arrays have neither attribute)."""
    layout = str(getattr(x, "layout", "torch.strided"))
    if layout != "torch.strided":
        kind = layout.removeprefix("torch.")
        return f"is a {kind} tensor: pass a dense tensor, e.g. x.to_dense()"
    if getattr(x, "is_meta", False):
        return "is a tensor on the meta device, which holds no values: pass one with its data"
    return None


def _subject(check: _InputCheck, x: Any, source: Any) -> str:
    """An input as error messages name it (with the Python type it was given as, if any)."""
    if source is None:
        return f"Input {check.spec.name!r}"
    given = type(source).__name__
    return f"Input {check.spec.name!r} (a Python {given}, read as a {x.dtype} array)"


def _conversion(x: Any, dtype: str, source: Any) -> str:
    """How to pass ``x`` (``source``: the Python value it was read from) with ``dtype``."""
    if source is not None:
        return f"pass a numpy array or torch tensor, e.g. np.asarray(x, dtype=np.{dtype})"
    if hasattr(x, "detach"):
        return f"convert it, e.g. x.to(torch.{dtype})"
    return f"convert it, e.g. x.astype(np.{dtype})"


class LoadedModel:
    """A protected model ready to run; call it like the original model.

    ``model(x)`` or ``model(x1, x2)`` (model-input order) or ``model(**{"input.1": x})``
    (names from :attr:`input_names`): numpy arrays in, numpy arrays out (torch tensors are also
    accepted; torch formats return tensors). One output gives one array, several a tuple.
    Inputs are checked against the configuration before the backend sees them, inputs sharing a
    named dynamic dimension against each other too, dynamic sizes against the ranges the model
    file records (:data:`~.backends.inputs.INPUTS_METADATA`). ``close()`` (or leaving a
    ``with`` block) erases the session key. Under a licence, each call (``run`` or
    ``model(...)``) counts one inference, whatever the batch size, before the backend runs.

    Thread-safe: threads may call one model at the same time (the calls run in parallel), and
    ``close()`` from another thread waits for the calls in progress before it erases the key;
    calls that start after ``close()`` raise :class:`ModelClosedError`.
    """

    def __init__(
        self,
        name: str,
        fmt: str,
        inputs: Sequence[InputSpec],
        outputs: Sequence[Any],
        key: np.ndarray,
        backend: Backend,
        meter: Callable[[int], None] | None = None,
    ) -> None:
        self.name = name
        self.format = fmt
        self.inputs: list[InputSpec] = list(inputs)
        self.input_names: list[str] = [i.name for i in inputs]
        # the file's own output names when the backend knows them (the configuration may list
        # fewer outputs than a multi-output model has), else the configuration's
        names = getattr(backend, "output_names", None)
        self.output_names: list[str] = list(names or (o.name for o in outputs))
        self.key_length = int(key.size)
        self._key = key
        self._backend: Backend | None = backend
        self._numpy = bool(getattr(backend, "wants_numpy", False))
        # the configuration cannot carry the dynamic axes' ranges (older runtimes would refuse
        # it): they come from the model file's input record, key last
        ranges = [spec_ranges(s) for s in getattr(backend, "input_record", None) or ()]
        self._checks = tuple(
            _InputCheck(s, ranges[i] if i < len(ranges) else {}) for i, s in enumerate(self.inputs)
        )
        self._shared = _shared_dims(self.inputs)
        self._index = {n: i for i, n in enumerate(self.input_names)}
        self._meter = meter
        # calls in progress, so that close() erases the key only once none uses it
        self._state = threading.Condition(threading.Lock())
        self._calls = 0
        self._closed = False

    def __repr__(self) -> str:
        state = ", closed" if self._closed else ""
        return (
            f"LoadedModel(name={self.name!r}, format={self.format!r}, "
            f"key_length={self.key_length}{state})"
        )

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("LoadedModel cannot be pickled: it holds key material.")

    def __enter__(self) -> LoadedModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        key = getattr(self, "_key", None)
        if key is not None:
            key[:] = 0

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Refuse new calls, wait for the calls in progress (in other threads), then overwrite
        the session key with zeros and release the backend (idempotent).

        Erasing the key under a running call would make it return wrong outputs without an
        error, so this waits; do not call it from inside a call of this model (it would wait
        for itself)."""
        with self._state:
            self._closed = True
            self._state.wait_for(lambda: self._calls == 0)
            self._key[:] = 0
            backend, self._backend = self._backend, None
        if backend is not None:
            backend.close()

    def expected_inputs(self) -> str:
        """What the configuration expects, one input per line."""
        return "\n".join(f"  {_describe(c)}" for c in self._checks)

    def _error(self, what: str) -> InputError:
        return InputError(
            f"{what} Model {self.name!r} ({self.format}) expects {len(self.inputs)} input(s):\n"
            f"{self.expected_inputs()}"
        )

    def _order(self, args: Sequence[Any], named: Mapping[str, Any]) -> list[Any]:
        if not named:
            if len(args) != len(self._checks):
                raise self._error(f"Got {len(args)} input(s).")
            return list(args)
        unknown = [n for n in named if n not in self._index]
        if unknown:
            raise self._error(f"Unknown input name(s) {', '.join(map(repr, unknown))}.")
        if len(args) > len(self._checks):
            raise self._error(f"Got {len(args)} positional input(s).")
        ordered: list[Any] = list(args) + [None] * (len(self._checks) - len(args))
        given = [False] * len(self._checks)
        for i in range(len(args)):
            given[i] = True
        for n, x in named.items():
            i = self._index[n]
            if given[i]:
                raise self._error(f"Input {n!r} is given both by position and by name.")
            ordered[i], given[i] = x, True
        missing = [self.input_names[i] for i, g in enumerate(given) if not g]
        if missing:
            raise self._error(f"Missing input(s) {', '.join(map(repr, missing))}.")
        return ordered

    def _listed(self, inputs: Sequence[Any] | Mapping[str, Any]) -> list[Any]:
        """``run()``'s argument in model-input order."""
        if isinstance(inputs, Mapping):
            return self._order((), inputs)
        # list(array) would split an array into rows, one per input; list("ab") into letters
        if (
            hasattr(inputs, "shape")
            or isinstance(inputs, str | bytes)
            or not isinstance(inputs, Iterable)
        ):
            got = "one array" if hasattr(inputs, "shape") else f"a {type(inputs).__name__} value"
            raise self._error(
                f"run() takes a list of inputs (or a dict by name), but got {got}: pass [x], or "
                "call the model as model(x)."
            )
        if isinstance(inputs, AbstractSet):  # no order: tensors (hashable) fed to other inputs
            raise self._error(
                f"run() takes a list of inputs in model-input order (or a dict by name), but got "
                f"a {type(inputs).__name__}, whose order is arbitrary: pass a list."
            )
        values = list(inputs)
        if len(values) != len(self._checks):
            raise self._error(f"Got {len(values)} input(s).")
        return values

    def _as_array(self, check: _InputCheck, x: Any) -> np.ndarray:
        """A list, tuple or Python number read as an array; other non-arrays are refused."""
        spec = check.spec
        wanted = (
            f"pass a numpy array or torch tensor of dtype {spec.dtype} and shape {_dims_text(spec)}"
        )
        if not isinstance(x, _PYTHON_ARRAYS):
            raise self._error(
                f"Input {spec.name!r} is a {type(x).__name__} value, not an array: {wanted}."
            )
        try:
            array = np.asarray(x)
        except ValueError:  # ragged nesting
            array = None
        if array is None or array.dtype.kind not in "biufc":
            raise self._error(
                f"Input {spec.name!r} is a {type(x).__name__} that is not a regular array of "
                f"numbers: {wanted}."
            )
        return array

    def _check(self, values: list[Any]) -> list[Any]:
        for i, (check, x) in enumerate(zip(self._checks, values, strict=True)):
            source = None  # the Python value an array was read from
            if not hasattr(x, "shape") or not hasattr(x, "dtype"):
                source, x = x, self._as_array(check, x)
                values[i] = x
            shape = x.shape
            if len(shape) != check.ndim:
                raise self._error(
                    f"{_subject(check, x, source)} has shape {tuple(shape)} ({len(shape)}-d), "
                    f"but the configuration expects {check.ndim}-d {_dims_text(check.spec)}."
                )
            for axis, size in check.static:
                if shape[axis] != size:
                    raise self._error(
                        f"{_subject(check, x, source)} has shape {tuple(shape)}, but axis {axis} "
                        f"must be {size}: expected {_dims_text(check.spec)}."
                    )
            if check.ranges and (
                problem := range_problem(shape, check.ranges, check.spec.dynamic_dims)
            ):
                raise self._error(f"{_subject(check, x, source)} {problem}")
            if x.dtype is check.np_dtype:  # fast path: native numpy array of the right dtype
                continue
            if problem := _tensor_problem(x):
                raise self._error(f"Input {check.spec.name!r} {problem}.")
            dtype = _dtype_name(x)
            if dtype != check.dtype:
                raise self._error(
                    f"{_subject(check, x, source)} has dtype {dtype}, but the configuration "
                    f"expects {check.dtype} ({_conversion(x, check.dtype, source)})."
                )
            if self._numpy and dtype == "bfloat16":
                raise self._error(
                    f"Input {check.spec.name!r} is bfloat16, which the {self.format} backend "
                    "cannot feed: onnxruntime's Python API takes numpy arrays, and numpy has no "
                    "bfloat16 (a torch tensor cannot be converted, an ml_dtypes array is "
                    "refused). Load a torch format of the model, or protect it with float32 "
                    "inputs."
                )
            if self._numpy and type(x) is not np.ndarray:
                x = values[i] = as_numpy(x)
            if isinstance(x, np.ndarray) and not x.dtype.isnative:
                values[i] = x.astype(x.dtype.newbyteorder("="))
        for dim, places in self._shared:
            sizes = [values[i].shape[axis] for i, axis in places]
            if any(size != sizes[0] for size in sizes):
                found = ", ".join(
                    f"{self.input_names[i]!r} has {size} on axis {axis}"
                    for (i, axis), size in zip(places, sizes, strict=True)
                )
                raise self._error(
                    f"Inputs {', '.join(repr(self.input_names[i]) for i, _ in places)} share the "
                    f"dynamic dimension {dim!r}, which must have one size in a call, but {found}. "
                    f"Pass inputs of the same {dim!r} size."
                )
        return values

    def _invoke(self, values: Callable[[], list[Any]]) -> list[Any]:
        """Check, count and run one call (``values()`` gives its inputs in model order) while
        it is counted in flight, so that close() cannot erase the key under it."""
        with self._state:
            if self._closed:
                raise ModelClosedError(
                    f"Model {self.name!r} ({self.format}) is closed; load it again with "
                    "SkRuntime.load()."
                )
            self._calls += 1
        try:
            checked = self._check(values())
            if self._meter is not None:
                self._meter(1)
            checked.append(self._key)
            try:
                return self._backend.run(checked)  # type: ignore[union-attr]  # open while in flight
            except BaseException as err:  # the backend's frames, and this one, hold the key
                checked.clear()
                _forget_callee_locals(err)
                raise
        finally:
            with self._state:
                self._calls -= 1
                if self._calls == 0:
                    self._state.notify_all()

    def run(self, inputs: Sequence[Any] | Mapping[str, Any]) -> list[Any]:
        """Run once; ``inputs`` in model-input order or by name. Always returns a list."""
        return self._invoke(lambda: self._listed(inputs))

    def __call__(self, /, *args: Any, **named: Any) -> Any:
        out = self._invoke(lambda: self._order(args, named))
        return out[0] if len(out) == 1 else tuple(out)
